"""Load flash-nsa (GitHub mdy666/Scalable-Flash-Native-Sparse-Attention, MIT; Triton; not on
PyPI) from a carried source tree for the `flash-nsa` bench target, its window branch stubbed.

`scripts/carry-flash-nsa.sh` exports its `flash_nsa/` package into `.peers/flash-nsa/`;
`NSA_FLASH_NSA_PATH` names another directory holding `flash_nsa/`, and an installed `flash_nsa`
is used when neither exists. Only `flash_nsa.modules.megatron_level_nsa` (the autograd function
behind `flash_nsa_varlen_func`) and what it imports are loaded: the package `__init__` files also
import its HF-level module (pandas) and its inference code, which the bench uses neither of.

Its sliding-window branch is flash-attn (`swa_fwd` / `swa_bwd`, imported by name into
`megatron_level_nsa` from `ops.sliding_window_attention`), which the device lacks: `load` replaces
those two names there by `window_forward_stub` / `window_backward_stub`, which return zeros of
the right shapes (the window adds nothing; it costs one zero fill of its output, and of dq, dk,
dv in backward). `NSAFunction` is a custom autograd function, so the stubs need no graph.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ENV_PATH = "NSA_FLASH_NSA_PATH"
CARRIED = Path(__file__).resolve().parents[1] / ".peers" / "flash-nsa"
ENTRY = "flash_nsa.modules.megatron_level_nsa"
CARRY_HINT = "bash scripts/carry-flash-nsa.sh, then carry .peers to the device (bench/README.md)"


def source_root() -> Path:
    """The directory holding `flash_nsa/`: $NSA_FLASH_NSA_PATH, else `.peers/flash-nsa`, else
    the parent of an installed `flash_nsa`, else `.peers/flash-nsa` (for the error message)."""
    if os.environ.get(ENV_PATH):
        return Path(os.environ[ENV_PATH])
    if CARRIED.is_dir():
        return CARRIED
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("flash_nsa")
        if spec is not None and spec.origin:
            return Path(spec.origin).parent.parent
    return CARRIED


def missing_reason(root: Path) -> str | None:
    """Why `root` holds no flash-nsa source (None when it does)."""
    if (root / "flash_nsa" / "modules" / "megatron_level_nsa.py").is_file():
        return None
    return (f"flash-nsa source not found: no flash_nsa/modules/megatron_level_nsa.py under {root} "
            f"({CARRY_HINT})")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3])


@contextlib.contextmanager
def _pkg_resources() -> Iterator[None]:
    """flash-nsa's utils compares triton versions with `pkg_resources.parse_version`, which
    setuptools >= 81 no longer ships: while it imports, a module with that one function stands
    in when the real one is missing (its utils keeps the reference)."""
    if importlib.util.find_spec("pkg_resources") is not None:
        yield
        return
    shim = types.ModuleType("pkg_resources")
    shim.parse_version = _version_tuple  # type: ignore[attr-defined]
    sys.modules["pkg_resources"] = shim
    try:
        yield
    finally:
        sys.modules.pop("pkg_resources", None)


def window_forward_stub(q: Any, k: Any, v: Any, sm_scale: float | None = None, out: Any = None,
                        helper: Any = None) -> tuple[Any, Any]:
    """Stands in for flash-nsa's `swa_fwd`: o [T, HQ, dv] (q's dtype) and lse [HQ, T] (float32),
    zeros."""
    import torch

    T, HQ = q.shape[0], q.shape[1]
    o = q.new_zeros(T, HQ, v.shape[-1]) if out is None else out.zero_()
    return o, torch.zeros(HQ, T, dtype=torch.float32, device=q.device)


def window_backward_stub(q: Any, k: Any, v: Any, out: Any, lse: Any, dout: Any,
                         sm_scale: float | None = None, helper: Any = None) -> tuple[Any, Any, Any]:
    """Stands in for flash-nsa's `swa_bwd`: dq, dk, dv of zeros (its backward accumulates the
    other branches into this dq)."""
    import torch

    return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


def _drop_modules() -> None:
    for name in [n for n in sys.modules if n == "flash_nsa" or n.startswith("flash_nsa.")]:
        del sys.modules[name]


def load(root: Path) -> types.ModuleType:
    """flash-nsa's `megatron_level_nsa` module from `root`, its window stubbed. `flash_nsa` and
    `flash_nsa.modules` are registered as bare packages so that their `__init__` files do not
    run. Raises what the import raises (and leaves no `flash_nsa` modules behind then)."""
    why = missing_reason(root)
    if why:
        raise FileNotFoundError(why)
    _drop_modules()
    pkg = root.resolve() / "flash_nsa"
    for name, path in (("flash_nsa", pkg), ("flash_nsa.modules", pkg / "modules")):
        bare = types.ModuleType(name)
        bare.__path__ = [str(path)]
        bare.__package__ = name
        sys.modules[name] = bare
    try:
        with _pkg_resources():
            module = importlib.import_module(ENTRY)
    except BaseException:
        _drop_modules()
        raise
    module.swa_fwd = window_forward_stub
    module.swa_bwd = window_backward_stub
    return module


def configure(module: types.ModuleType, l: int, d: int, l_slc: int, n: int, w: int, cu_seqlens: Any) -> None:
    """Set flash-nsa's global `NSAHelper` as its `NSACore` does (mean compression of k and v, no
    recomputation, one GPU, 1 initial and 2 local forced blocks) and compute its varlen
    metadata for `cu_seqlens` (int32 [B + 1])."""
    helper = module.NSAHelper
    helper.set_hyperparameters(kernel_size=l, stride=d, block_size=l_slc, window_size=w, top_n=n,
                               num_init_blocks=1, num_local_blocks=2)
    helper.set_recompute(recompute_swa_o=False, recompute_slc_o=False, recompute_cmp_kv=False,
                         recompute_cmp_o=False)
    helper.set_cmp_kv_method(cmp_k_method="mean", cmp_v_method="mean")
    helper.x_cu_seqlens = None  # block sizes may have changed: recompute the metadata
    helper.init_cu_seqlens(cu_seqlens)
