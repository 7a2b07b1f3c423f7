"""`python -m bench run`: gate, time every (workload case, target), record, print a table.

A size that runs out of memory, raises, exceeds the per-case time budget, or is predicted to
exceed it (the last timed size of the same target and mode, scaled by the model's FLOPs) is
recorded as skipped or failed with its reason; larger sizes of that series are then skipped too.
"""

from __future__ import annotations

import datetime as dt
import gc
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nsa_spec.errors import UnsupportedError

from bench import results, targets, timing, workloads
from bench.gate import GateResult, run_gate
from bench.workloads import Case


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch
    except ImportError:
        return False
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def _reset_peak(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    """The CUDA allocator's peak since `_reset_peak`, in GiB (None on the CPU)."""
    if device != "cuda":
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3)


def make_row(case: Case, target: targets.Target, status: str, reason: str = "",
             measured: timing.Timing | None = None, note: str = "", commit: str = "",
             peak_gib: float | None = None) -> dict[str, Any]:
    """One result row; rates are filled when `measured` is given. `peak_gib` (JSON rows only, not
    a CSV column) is the CUDA allocator's peak over preparing and timing the case, inputs included."""
    b = target.model_blocks(case)
    model = case.dense_cost() if target.kind == "dense" else case.nsa_cost(b)
    dense = case.dense_cost()
    row: dict[str, Any] = {
        "workload": case.workload, "mode": case.mode, "case_id": case.case_id, "backend": target.name,
        "kind": target.kind, "batch": case.batch, "seqlen": case.seqlen, "heads_q": case.heads_q,
        "heads_kv": case.heads_kv, "group_size": case.group_size, "dk": case.dk, "dv": case.dv,
        "dtype": case.dtype, "l": b.l, "d": b.d, "l_slc": b.l_slc, "n": b.n, "w": b.w,
        "selected": case.selected, "status": status, "reason": reason, "time_ms": None, "timer": "",
        "flops": model.total_flops, "bytes": model.total_bytes, "tflops": None, "tbps": None,
        "dense_flops": dense.total_flops, "dense_bytes": dense.total_bytes,
        "ideal_speedup": case.ideal_speedup(), "ideal_basis": case.ideal_basis,
        "speedup_vs_dense": None, "dense_ref": "", "note": note, "commit": commit,
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "peak_gib": peak_gib,
    }
    if measured is not None:
        seconds = measured.ms * 1e-3
        row.update(time_ms=measured.ms, timer=measured.timer, tflops=model.total_flops / seconds / 1e12,
                   tbps=model.total_bytes / seconds / 1e12)
    return row


class Series:
    """Sizes of one target in one mode at one batch and head count, run in ascending order."""

    def __init__(self) -> None:
        self.stopped: str | None = None
        self.last: tuple[int, float] | None = None  # (model FLOPs, seconds per call)

    def predicted_s(self, flops: int) -> float | None:
        if self.last is None:
            return None
        return self.last[1] * flops / max(self.last[0], 1)


def run_case(case: Case, target: targets.Target, device: str, budget_s: float, series: Series,
             commit: str) -> dict[str, Any]:
    """Time one case on one target, or record why not."""
    if series.stopped:
        return make_row(case, target, "skipped", series.stopped, commit=commit)
    why = target.unsupported(case, device)
    if why:
        return make_row(case, target, "skipped", why, commit=commit)
    flops = case.dense_cost().total_flops if target.kind == "dense" else case.nsa_cost(
        target.model_blocks(case)).total_flops
    predicted = series.predicted_s(flops)
    if predicted is not None and predicted > budget_s:
        series.stopped = f"a smaller size was predicted over the {budget_s:.0f} s budget"
        return make_row(case, target, "skipped",
                        f"predicted {predicted:.0f} s per call (scaled by FLOPs from the last size) "
                        f"> {budget_s:.0f} s budget", commit=commit)
    prepared = None
    try:
        _reset_peak(device)
        prepared = target.prepare(case, device)
        with prepared.context():
            measured = timing.measure(prepared.fn, device, budget_s, prepared.grad_to_none)
        series.last = (flops, measured.estimate_s)
        return make_row(case, target, "ok", measured=measured, note=prepared.note, commit=commit,
                        peak_gib=_peak_gib(device))
    except UnsupportedError as exc:
        return make_row(case, target, "skipped", f"unsupported: {exc}", commit=commit)
    except timing.OverBudgetError as exc:
        series.stopped = "a smaller size exceeded the time budget"
        return make_row(case, target, "skipped", str(exc), commit=commit)
    except Exception as exc:  # a failing size is recorded, never a crash of the whole run
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        if _is_oom(exc):
            series.stopped = "a smaller size ran out of memory"
            return make_row(case, target, "skipped", f"out of memory: {first}", commit=commit)
        series.stopped = "a smaller size failed"
        return make_row(case, target, "failed", f"{type(exc).__name__}: {first}", commit=commit)
    finally:
        del prepared
        _free(device)


def run(
    workload_names: Sequence[str], target_names: Sequence[str], device: str,
    overrides: workloads.Overrides, budget_s: float, out_dir: Path | None = None,
    gate: Callable[[str, str], GateResult] = run_gate,
) -> dict[str, list[dict[str, Any]]]:
    """Gate the NSA targets, time every case of every workload, write the files; rows by workload."""
    meta = results.environment(device)
    meta["budget_s"] = budget_s
    meta["started"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    chosen = [targets.get(n) for n in target_names]
    refused: dict[str, str] = {}
    meta["gates"] = {}
    for t in chosen:
        if t.needs_gate:
            _log(f"gate: {t.name} on {device} ...")
            g = gate(t.name, device)
            meta["gates"][t.name] = {"passed": g.passed, "seconds": round(g.seconds, 1),
                                     "tail": g.tail[-600:]}
            _log(f"gate: {t.name} {'passed' if g.passed else 'FAILED'} in {g.seconds:.0f} s")
            if not g.passed:
                refused[t.name] = g.reason()
    out: dict[str, list[dict[str, Any]]] = {}
    for name in workload_names:
        cases = workloads.get(name).cases(overrides)
        rows = []
        for t in chosen:
            series: dict[tuple[Any, ...], Series] = {}
            for case in (c for c in cases if c.mode in t.modes):
                if t.name in refused:
                    rows.append(make_row(case, t, "refused", refused[t.name], commit=meta["commit"]))
                    continue
                key = (case.mode, case.batch, case.heads_kv)
                row = run_case(case, t, device, budget_s, series.setdefault(key, Series()), meta["commit"])
                peak = f" (peak {row['peak_gib']} GiB)" if row["peak_gib"] is not None else ""
                _log(f"{name} {t.name} {case.case_id}: {row['status']} "
                     f"{row['time_ms'] if row['time_ms'] is not None else row['reason']}{peak}")
                rows.append(row)
            json_path, csv_path = results.write(name, rows, meta, out_dir)
        _log(f"wrote {json_path} and {csv_path}")
        results.fill_speedups(rows)
        out[name] = rows
    return out
