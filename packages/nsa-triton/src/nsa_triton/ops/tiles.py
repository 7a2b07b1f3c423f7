"""Tile sizes shared by the kernel launchers, and the shared-memory fit of a tile plan."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import triton
from nsa_spec.errors import UnsupportedError

from nsa_triton.ops.online import interpreted

SM90_SMEM = 232448
"""Bytes of shared memory a program may opt into on sm_90 (H100/H200): the plans' limit where no
CUDA device is asked (the interpreter, offline compiles)."""

Plan = TypeVar("Plan")
LAUNCH_OPTIONS = frozenset({"num_warps", "num_stages"})


def padded(n: int) -> int:
    """The power of two >= max(n, 16) that a `tl.arange` / `tl.dot` dimension of size n needs."""
    return max(16, triton.next_power_of_2(n))


def dot_precision(dtype: torch.dtype) -> str:
    """float32 inputs multiply in IEEE float32 (tf32 would be far less careful than the naive
    float32 computation); half-precision inputs take the matrix units' own mode."""
    return "ieee" if dtype == torch.float32 else "tf32"


def group_tile(group: int, rows: int) -> tuple[int, int]:
    """(tokens per tile, padded group size) so that one tile holds about `rows` query rows, each
    row one (token, query head of the group) pair."""
    gp = max(1, triton.next_power_of_2(group))
    return max(1, rows // gp), gp


@functools.cache
def _device_smem(index: int) -> int:
    return triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]


def smem_limit(device: torch.device) -> int:
    """Shared memory one program may use on `device`: the driver's opt-in limit on CUDA (227 KiB
    on sm_90, 163 KiB on sm_80, 99 KiB on sm_86/sm_89), else `SM90_SMEM`."""
    if device.type != "cuda":
        return SM90_SMEM
    return _device_smem(device.index if device.index is not None else torch.cuda.current_device())


def _compile_key(value: Any) -> Any:
    """What of a runtime argument the compiled binary depends on: a tensor's dtype, an int's
    specialisation (equal to 1, divisible by 16), a float's type."""
    if isinstance(value, torch.Tensor) or hasattr(value, "dtype"):
        return value.dtype
    if isinstance(value, int) and not isinstance(value, bool):
        return value == 1, value % 16 == 0
    return type(value).__name__ if isinstance(value, float) else value


_SHARED: dict[tuple, int] = {}


def _shared_bytes(kernel: Any, args: tuple, kwargs: dict, device: torch.device) -> int:
    """The shared memory of `kernel` compiled for these arguments, cached by what the binary
    depends on (constexprs, launch options, argument dtypes and int specialisations), so that
    lengths and strides that change from call to call compile and look up nothing new."""
    bound = dict(zip(kernel.arg_names, args, strict=False)) | kwargs
    constexprs = {p.name for p in kernel.params if p.is_constexpr}
    key = (kernel.fn.__module__, kernel.__name__, str(device),
           tuple(sorted((k, v if k in constexprs or k in LAUNCH_OPTIONS else _compile_key(v))
                        for k, v in bound.items())))
    if key not in _SHARED:
        compiled = kernel.warmup(*args, grid=(1,), **kwargs)
        compiled = compiled.result() if hasattr(compiled, "result") else compiled  # an async compile
        _SHARED[key] = compiled.metadata.shared
    return _SHARED[key]


def first_fit(kernel: Any, plans: Sequence[Plan], launch: Callable[[Plan], tuple[tuple, dict]],
              device: torch.device) -> Plan:
    """The first of `plans` (the tuned one first, then smaller ones) whose compiled `kernel` fits
    `smem_limit(device)`; `launch(plan)` gives the kernel's (args, kwargs) under a plan. The check
    compiles the kernel (no launch), so it holds on any GPU the driver reports; under the
    interpreter nothing compiles and the first plan is taken. Raises `UnsupportedError` when no
    plan fits: a valid configuration then fails with its reason, not with Triton's OutOfResources."""
    if interpreted():
        return plans[0]
    limit, needs = smem_limit(device), []
    for plan in plans:
        args, kwargs = launch(plan)
        need = _shared_bytes(kernel, args, kwargs, device)
        if need <= limit:
            return plan
        needs.append(need)
    raise UnsupportedError(
        f"{kernel.__name__}: none of its {len(plans)} tile plans fits the {limit} bytes "
        f"of shared memory a program may use on this GPU (the smallest needs {min(needs)} bytes)"
    )


def staged_plans(keys: int, stages: int = 3) -> list[tuple[int, int]]:
    """(keys per tile, pipeline stages) from the tuned pair down: fewer stages, then half the keys
    at one stage, down to 16 keys."""
    plans = [(keys, s) for s in range(stages, 0, -1)]
    while keys > 16:
        keys //= 2
        plans.append((keys, 1))
    return plans
