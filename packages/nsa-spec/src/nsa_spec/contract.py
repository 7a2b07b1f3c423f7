"""The kernel contract (DESIGN.md, Contracts): what every backend takes and returns.

A backend starts after projections, RoPE and phi. Layout is [batch, seq, heads, dim]; query head
h uses key/value head h // G (G = HQ / H consecutive query heads share one key/value head).
Arrays may be NumPy arrays or any backend's tensors: these classes only hold them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from nsa_spec.blocks import cmp_cu_seqlens, n_cmp
from nsa_spec.config import NSAConfig
from nsa_spec.errors import InvalidInputError

BRANCHES = ("cmp", "slc", "win")
ARRAYS = ("q", "k_cmp", "v_cmp", "k_slc", "v_slc", "k_win", "v_win", "gates")
"""The array fields of `NSAInputs` (and of `NSAGrads`), in order."""


@dataclass(frozen=True)
class NSAInputs:
    """Inputs of one NSA attention call.

    Shapes: q [B, T, HQ, dk]; k_cmp/v_cmp [B, N_cmp(T), H, dk|dv] (compressed tokens);
    k_slc/v_slc and k_win/v_win [B, T, H, dk|dv]; gates [B, T, HQ, 3] (activated gate values,
    branch order cmp, slc, win). With `cu_seqlens` (int [n_seq + 1], starting at 0 and ending
    at T) B must be 1 and sequences are packed along T; compressed tokens are then packed in
    sequence order, `blocks.cmp_cu_seqlens(cu_seqlens)` giving their offsets.
    """

    q: Any
    k_cmp: Any
    v_cmp: Any
    k_slc: Any
    v_slc: Any
    k_win: Any
    v_win: Any
    gates: Any
    cu_seqlens: Any = None

    def arrays(self) -> dict[str, Any]:
        """The array fields by name (cu_seqlens excluded)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "cu_seqlens"}

    def replace(self, **changes: Any) -> NSAInputs:
        """A copy with some fields changed."""
        return NSAInputs(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})


@dataclass(frozen=True)
class NSAOutput:
    """Output of one NSA attention call.

    o [B, T, HQ, dv]; lse [B, T, HQ, 3] per-branch log-sum-exp of the scaled scores (-inf over
    an empty key set); indices [B, T, H, n] selected blocks, ascending, -1 padded; branch_o
    [B, T, HQ, 3, dv] the three branch outputs before gating (cmp, slc, win), filled by backends
    whose forward saves them for their backward (`Capabilities.saves`).
    """

    o: Any
    lse: Any = None
    indices: Any = None
    branch_o: Any = None


@dataclass(frozen=True)
class NSAGrads:
    """Gradients of a scalar loss with respect to every array of `NSAInputs`, same shapes."""

    q: Any
    k_cmp: Any
    v_cmp: Any
    k_slc: Any
    v_slc: Any
    k_win: Any
    v_win: Any
    gates: Any


@dataclass(frozen=True)
class DecodeCache:
    """Preallocated decode storage for a batch of sequences, each with its own length S_b.

    k_raw/v_raw [B, l, H, dk|dv]: ring of the last l = cmp_len raw cmp tokens (phi's input),
    position p in row p % l. k_cmp/v_cmp [B, C_cmp, H, .]: compressed tokens, rows >= N_cmp(S_b)
    unused. k_slc/v_slc [B, C, H, .]: the slc stream, rows >= S_b unused. k_win/v_win
    [B, w, H, .]: ring of the last w = window win tokens, position p in row p % w. lengths [B]
    int64: S_b, the tokens sequence b holds (the new token included when a step attends); a NumPy
    array for the reference, an int64 tensor on the cache's device for torch backends (read on
    the device only, so a step needs no host copy). Capacity C = k_slc.shape[1] tokens per
    sequence, C_cmp >= N_cmp(C). Unused rows hold anything and are never read into a result.
    """

    k_raw: Any
    v_raw: Any
    k_cmp: Any
    v_cmp: Any
    k_slc: Any
    v_slc: Any
    k_win: Any
    v_win: Any
    lengths: Any

    @property
    def capacity(self) -> int:
        """Tokens per sequence the storage holds: C = k_slc.shape[1]."""
        return int(self.k_slc.shape[1])

    def replace(self, **changes: Any) -> DecodeCache:
        """A copy with some fields changed."""
        return DecodeCache(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})


CACHE_ARRAYS = ("k_raw", "v_raw", "k_cmp", "v_cmp", "k_slc", "v_slc", "k_win", "v_win")
"""The storage fields of `DecodeCache` (lengths excluded), in order."""


def validate_cache(cache: DecodeCache, config: NSAConfig) -> tuple[int, int, int, int, int]:
    """Check every shape rule of the decode layout; return (B, C, H, dk, dv).

    Values are not read (lengths may live on a device); the reference checks them itself.
    """
    B, C, H, dk = _shape("k_slc", cache.k_slc, 4)
    dv = _shape("v_slc", cache.v_slc, 4)[3]
    if min(B, H, dk, dv) < 1:
        raise InvalidInputError(f"k_slc must have non-empty dims [B, C, H, dk]: k_slc.shape={(B, C, H, dk)}")
    _expect("v_slc", _shape("v_slc", cache.v_slc, 4), (B, C, H, dv), "[B, C, H, dv] like k_slc")
    l, w = config.cmp_len, config.window
    for name, x, rows, dim, rule in (
        ("k_raw", cache.k_raw, l, dk, "a ring of l = cmp_len rows"),
        ("v_raw", cache.v_raw, l, dv, "a ring of l = cmp_len rows"),
        ("k_win", cache.k_win, w, dk, "a ring of w = window rows"),
        ("v_win", cache.v_win, w, dv, "a ring of w = window rows"),
    ):
        _expect(name, _shape(name, x, 4), (B, rows, H, dim), f"[B, {rows}, H, {dim}], {rule}")
    kc = _shape("k_cmp", cache.k_cmp, 4)
    if kc[:1] != (B,) or kc[2:] != (H, dk) or kc[1] < n_cmp(C, config):
        raise InvalidInputError(
            f"k_cmp must have shape [B, C_cmp, H, dk] = [{B}, >= N_cmp(C) = {n_cmp(C, config)}, {H}, {dk}] "
            f"(C = k_slc.shape[1] = {C}): k_cmp.shape={kc}"
        )
    _expect("v_cmp", _shape("v_cmp", cache.v_cmp, 4), (B, kc[1], H, dv), "[B, C_cmp, H, dv] like k_cmp")
    _expect("lengths", _shape("lengths", cache.lengths, 1), (B,), "[B], one length per sequence")
    return B, C, H, dk, dv


@dataclass(frozen=True)
class DecodeResult:
    """One decode step: the output for the new token and tokens read per (batch, kv head)."""

    out: NSAOutput
    reads: Any


def _shape(name: str, x: Any, ndim: int) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    if shape is None:
        raise InvalidInputError(f"{name} must be an array: got {type(x).__name__}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != ndim:
        raise InvalidInputError(f"{name} must have {ndim} dims: {name}.shape={shape}")
    return shape


def _expect(name: str, shape: tuple[int, ...], expected: tuple[int, ...], rule: str) -> None:
    if shape != expected:
        raise InvalidInputError(f"{name} must have shape {expected} ({rule}): {name}.shape={shape}")


def check_cu_seqlens(cu_seqlens: Any, B: int, T: int) -> np.ndarray:
    """Host offsets of packed sequences, checked: B == 1, 1-D ints from 0 to T, strictly increasing."""
    cu = np.asarray(cu_seqlens)
    if B != 1:
        raise InvalidInputError(f"cu_seqlens needs B == 1 (packed sequences): B={B}")
    if cu.ndim != 1 or cu.size < 2 or not np.issubdtype(cu.dtype, np.integer):
        raise InvalidInputError(
            f"cu_seqlens must be a 1-D int array of n_seq + 1 offsets: cu_seqlens={cu.tolist()}"
        )
    if cu[0] != 0 or cu[-1] != T or np.any(np.diff(cu) < 1):
        raise InvalidInputError(
            f"cu_seqlens must start at 0, end at T={T} and strictly increase: cu_seqlens={cu.tolist()}"
        )
    return cu


def validate_inputs(
    inputs: NSAInputs, config: NSAConfig, raw_cmp: bool = False
) -> tuple[int, int, int, int, int, int, int]:
    """Check every shape rule of the contract; return (B, T, HQ, H, G, dk, dv).

    With `raw_cmp`, the k_cmp/v_cmp fields hold the raw cmp stream k_raw/v_raw [B, T, H, .]
    (before phi) and are checked, and named in errors, as such.
    """
    B, T, HQ, dk = _shape("q", inputs.q, 4)
    if min(B, T, HQ, dk) < 1:
        raise InvalidInputError(f"q must have non-empty dims [B, T, HQ, dk]: q.shape={(B, T, HQ, dk)}")
    ks = _shape("k_slc", inputs.k_slc, 4)
    if ks[:2] != (B, T) or ks[3] != dk or ks[2] < 1:
        raise InvalidInputError(
            f"k_slc must have shape [B, T, H, dk] = [{B}, {T}, H, {dk}] like q: k_slc.shape={ks}"
        )
    H = ks[2]
    if HQ % H:
        raise InvalidInputError(
            f"key/value heads H must divide query heads HQ (GQA): HQ={HQ}, H={H}"
        )
    dv = _shape("v_slc", inputs.v_slc, 4)[3]
    _expect("v_slc", _shape("v_slc", inputs.v_slc, 4), (B, T, H, dv), "[B, T, H, dv]")
    _expect("k_win", _shape("k_win", inputs.k_win, 4), (B, T, H, dk), "[B, T, H, dk]")
    _expect("v_win", _shape("v_win", inputs.v_win, 4), (B, T, H, dv), "[B, T, H, dv] like v_slc")
    _expect("gates", _shape("gates", inputs.gates, 4), (B, T, HQ, 3), "[B, T, HQ, 3]")
    if dv < 1:
        raise InvalidInputError(f"dv must be >= 1: v_slc.shape={(B, T, H, dv)}")
    if inputs.cu_seqlens is None:
        N = n_cmp(T, config)
    else:
        cu = check_cu_seqlens(inputs.cu_seqlens, B, T)
        N = int(cmp_cu_seqlens(cu, config)[-1])
    if raw_cmp:
        _expect("k_raw", _shape("k_raw", inputs.k_cmp, 4), (B, T, H, dk), "[B, T, H, dk], the raw cmp stream")
        _expect("v_raw", _shape("v_raw", inputs.v_cmp, 4), (B, T, H, dv), "[B, T, H, dv], the raw cmp stream")
        return B, T, HQ, H, HQ // H, dk, dv
    _expect("k_cmp", _shape("k_cmp", inputs.k_cmp, 4), (B, N, H, dk), "[B, N_cmp(T), H, dk]")
    _expect("v_cmp", _shape("v_cmp", inputs.v_cmp, 4), (B, N, H, dv), "[B, N_cmp(T), H, dv]")
    return B, T, HQ, H, HQ // H, dk, dv
