"""Timing: `triton.testing.do_bench` medians on CUDA, a perf_counter median on the CPU.

Every measurement starts with one untimed warm-up call (compilation, autotuning, plan and
handle creation; allowed `WARMUP_ALLOWANCE` budgets) and one wall-clock call that estimates the
cost. A call too slow for do_bench's fixed 8+ calls within the budget is timed with CUDA events
over fewer calls, and the row says so; one slower than the whole budget is not timed at all
(`OverBudgetError`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DO_BENCH_CALLS = 8  # do_bench: 1 + 5 estimate + >= 1 warm-up + >= 1 timed call
WARMUP_ALLOWANCE = 4  # the first call may take this many budgets (it compiles)


class OverBudgetError(Exception):
    """One call takes longer than the time budget of a case."""

    def __init__(self, seconds: float, budget_s: float, what: str = "one call"):
        super().__init__(f"{what} took {seconds:.1f} s, over the {budget_s:.0f} s budget of a case")
        self.seconds = seconds


@dataclass(frozen=True)
class Timing:
    """Median milliseconds of one call, how they were taken, and the wall-clock estimate."""

    ms: float
    timer: str
    estimate_s: float


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _wall(fn: Callable[[], Any], device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _events(fn: Callable[[], Any], calls: int, grad_to_none: list[Any]) -> list[float]:
    import torch

    out = []
    for _ in range(calls):
        for x in grad_to_none:
            x.grad = None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end))
    return out


def measure(
    fn: Callable[[], Any], device: str, budget_s: float, grad_to_none: list[Any] | None = None,
    warmup_ms: float = 25, rep_ms: float = 100,
) -> Timing:
    """Median time of `fn()` in milliseconds on `device` ("cuda" or "cpu")."""
    grads = grad_to_none or []
    first = _wall(fn, device)
    if first > WARMUP_ALLOWANCE * budget_s:
        raise OverBudgetError(first, WARMUP_ALLOWANCE * budget_s, "the warm-up call")
    estimate = _wall(fn, device)
    if estimate > budget_s:
        raise OverBudgetError(estimate, budget_s)
    if device == "cuda":
        if estimate * DO_BENCH_CALLS <= budget_s:
            from triton.testing import do_bench

            ms = do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grads or None, return_mode="median")
            return Timing(float(ms), "triton do_bench median", estimate)
        calls = max(1, min(3, int(budget_s / estimate) - 2))
        ms = statistics.median(_events(fn, calls, grads))
        return Timing(ms, f"cuda events median of {calls} (a call is too slow for do_bench)", estimate)
    calls = max(1, min(20, int(rep_ms / 1e3 / max(estimate, 1e-6))))
    times = [_wall(fn, device) * 1e3 for _ in range(calls)]
    return Timing(statistics.median(times), f"perf_counter median of {calls}", estimate)
