"""Running a backend on NumPy data and judging its answers against the oracle.

`Runner` binds (backend, device, dtype): it moves float64 inputs in through the backend's
`asarray`, reads results back with `to_numpy`, and gives the oracle exactly the values the backend
saw. `assert_close` and `assert_selection` are the only two verdicts the suite pronounces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from nsa_spec.backends.protocol import Backend
from nsa_spec.config import NSAConfig
from nsa_spec.contract import BRANCHES, CACHE_ARRAYS, DecodeCache, NSAInputs, NSAOutput
from nsa_spec.reference.nsa import nsa_attention
from nsa_spec.reference.select import is_valid_top_n

from nsa_conformance import lowprec, tolerances
from nsa_conformance.cases import Case


def compute_capability(device: str) -> tuple[int, int] | None:
    """(major, minor) of the current CUDA device when torch can tell, else None."""
    if device != "cuda":
        return None
    try:
        import torch
    except ImportError:
        return None
    return tuple(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None


@dataclass
class Runner:
    """A backend on one device and dtype, driven with NumPy arrays."""

    backend: Backend
    device: str
    dtype: str

    def problem(self, op: str, case: Case) -> Any:
        return case.problem(op, self.backend.capabilities.array_api, self.device, self.dtype,
                            compute_capability(self.device))

    def require(self, op: str, case: Case) -> None:
        """Skip unless the backend claims `op` on `case` in this dtype and device."""
        reasons = self.backend.not_supported_reasons(self.problem(op, case))
        if reasons:
            pytest.skip(f"{self.backend.name} does not claim this: " + "; ".join(reasons))

    def put(self, x: np.ndarray, dtype: str | None = None) -> Any:
        return self.backend.asarray(np.asarray(x), dtype or self.dtype, self.device)

    def get(self, x: Any) -> np.ndarray:
        return np.asarray(self.backend.to_numpy(x), dtype=np.float64)

    def put_inputs(self, inputs: NSAInputs) -> tuple[NSAInputs, NSAInputs]:
        """(what the backend gets, the float64 values it actually holds)."""
        arrays = {name: self.put(x) for name, x in inputs.arrays().items()}
        cu = None if inputs.cu_seqlens is None else self.put(inputs.cu_seqlens, "int64")
        seen = {name: self.get(x) for name, x in arrays.items()}
        return (NSAInputs(**arrays, cu_seqlens=cu),
                NSAInputs(**seen, cu_seqlens=inputs.cu_seqlens))

    def forward(self, inputs: NSAInputs, config: NSAConfig) -> tuple[NSAOutput, NSAInputs, Any]:
        """Run the backend: (float64 output with int64 indices, the inputs it saw, its raw output)."""
        theirs, seen = self.put_inputs(inputs)
        raw = self.backend.forward(theirs, config)
        return self.output(raw), seen, (theirs, raw)

    def output(self, raw: NSAOutput) -> NSAOutput:
        return NSAOutput(o=self.get(raw.o), lse=self.get(raw.lse),
                         indices=np.asarray(self.backend.to_numpy(raw.indices)).astype(np.int64))

    def put_cache(self, cache: DecodeCache) -> tuple[DecodeCache, DecodeCache]:
        """(the cache in backend arrays, lengths as int64 on the device; the float64 values it holds)."""
        theirs = {n: self.put(getattr(cache, n)) for n in CACHE_ARRAYS}
        seen = {n: self.get(x) for n, x in theirs.items()}
        return (cache.replace(**theirs, lengths=self.put(cache.lengths, "int64")),
                cache.replace(**seen))


def assert_close(what: str, got: np.ndarray, oracle: np.ndarray, naive: np.ndarray, dtype: str,
                 k: float) -> None:
    """The suite's one numeric verdict (tolerances.py): NaN fails, -inf must match, then the bound."""
    got, oracle, naive = (np.asarray(x, dtype=np.float64) for x in (got, oracle, naive))
    assert got.shape == oracle.shape, f"{what}: shape {got.shape}, expected {oracle.shape}"
    nan = np.isnan(got)
    assert not nan.any(), f"{what}: {int(nan.sum())} NaN, first at {tuple(np.argwhere(nan)[0])}"
    inf_ref = ~np.isfinite(oracle)
    mismatch = inf_ref != ~np.isfinite(got)
    mismatch |= inf_ref & (got != oracle)
    assert not mismatch.any(), (
        f"{what}: infinite where the oracle is not, or the reverse, at "
        f"{tuple(np.argwhere(mismatch)[0])}: got {got[tuple(np.argwhere(mismatch)[0])]}, "
        f"oracle {oracle[tuple(np.argwhere(mismatch)[0])]}"
    )
    if not np.all(np.isfinite(naive[~inf_ref])):
        raise RuntimeError(f"{what}: the naive {dtype} computation overflowed; the case is unfit")
    err = tolerances.max_abs_error(got, oracle)
    naive_err = tolerances.max_abs_error(naive, oracle)
    allowed = tolerances.bound(naive_err, oracle, dtype, k)
    if err > allowed:
        diff = np.where(inf_ref, 0.0, np.abs(got - oracle))
        at = tuple(int(i) for i in np.unravel_index(np.argmax(diff), diff.shape))
        raise AssertionError(
            f"{what}: max error {err:.3e} > allowed {allowed:.3e} (= {k} x naive {dtype} error "
            f"{naive_err:.3e} + floor); worst at {at}: got {got[at]:.8g}, oracle {oracle[at]:.8g}"
        )


def free_gap(scores: np.ndarray, positions: np.ndarray, config: NSAConfig) -> np.ndarray:
    """Per (t, h): the score gap between the last free block chosen and the first left out.

    scores [T, H, blocks]; inf where there is no choice to make (all blocks fit, or none is free).
    """
    n_blocks = scores.shape[-1]
    c = np.asarray(positions)[:, None, None] // config.slc_len
    j = np.arange(n_blocks)
    exists = j <= c
    forced = exists & ((j == 0) | (j == c) | (j == c - 1))
    free = np.where(exists & ~forced, scores, -np.inf)
    ranked = -np.sort(-free, axis=-1)
    slots = np.broadcast_to(np.minimum(c[..., 0] + 1, config.top_n) - forced.sum(-1), free.shape[:-1])
    padded = np.concatenate([ranked, np.full((*ranked.shape[:-1], 1), -np.inf)], axis=-1)
    last_in = np.take_along_axis(padded, np.maximum(slots - 1, 0)[..., None], -1)[..., 0]
    first_out = np.take_along_axis(padded, slots[..., None], -1)[..., 0]
    no_choice = (slots <= 0) | ~np.isfinite(first_out)
    return np.where(no_choice, np.inf, last_in - np.where(no_choice, 0.0, first_out))


def resolution(scores: np.ndarray, naive_scores: np.ndarray, dtype: str) -> np.ndarray:
    """Per (t, h): how far apart two block scores must be for `dtype` to order them reliably."""
    err = np.max(np.abs(naive_scores - scores), axis=-1, initial=0.0)
    magnitude = np.maximum(1.0, np.max(scores, -1, initial=0.0))
    return tolerances.K_SCORES * err + tolerances.floor(dtype) * magnitude


def decisive(inputs: NSAInputs, config: NSAConfig, dtype: str) -> np.ndarray:
    """Bool [B, T, H]: where the oracle's selection is unambiguous at `dtype`'s resolution."""
    B, T, H = np.shape(inputs.q)[0], np.shape(inputs.q)[1], np.shape(inputs.k_slc)[2]
    out = np.zeros((B, T, H), dtype=bool)
    exact = lowprec.block_scores(inputs, config)
    naive = lowprec.block_scores(inputs, config, dtype)
    for (b, lo, hi, _, _), s, s_naive in zip(lowprec.spans(inputs, config), exact, naive, strict=True):
        out[b, lo:hi] = free_gap(s, np.arange(hi - lo), config) > resolution(s, s_naive, dtype)
    return out


def assert_selection(inputs: NSAInputs, config: NSAConfig, got: np.ndarray, dtype: str) -> None:
    """The near-tie policy (DESIGN.md, Testing) for indices [B, T, H, n] of a backend.

    Everywhere: a valid top-n of the oracle's scores up to the dtype's resolution. Where the gap
    between the n-th and (n+1)-th score exceeds that resolution: exactly the oracle's blocks.
    """
    B, T, H = np.shape(inputs.q)[0], np.shape(inputs.q)[1], np.shape(inputs.k_slc)[2]
    expected = (B, T, H, config.top_n)
    assert got.shape == expected, f"indices: shape {got.shape}, expected {expected}"
    padded_last = np.where(got < 0, np.iinfo(np.int64).max, got)
    unordered = np.any(np.diff(padded_last, axis=-1) < 0, axis=-1)
    if unordered.any():
        first = got[tuple(np.argwhere(unordered)[0])].tolist()
        raise AssertionError(f"indices must be ascending with -1 padding last: got {first}")
    oracle = nsa_attention(inputs, config).indices
    exact = lowprec.block_scores(inputs, config)
    naive = lowprec.block_scores(inputs, config, dtype)
    for (b, lo, hi, _, _), s, s_naive in zip(lowprec.spans(inputs, config), exact, naive, strict=True):
        pos = np.arange(hi - lo)
        res = resolution(s, s_naive, dtype)
        mine, theirs = got[b, lo:hi], oracle[b, lo:hi]
        bad = ~is_valid_top_n(mine, s, pos, config, res)
        if bad.any():
            t, h = (int(i) for i in np.argwhere(bad)[0])
            raise AssertionError(
                f"indices: {int(bad.sum())} (t, h) hold no valid top-n, first sequence {b}@{lo} "
                f"t={t} h={h}: got {mine[t, h].tolist()}, oracle {theirs[t, h].tolist()}, "
                f"scores {np.round(s[t, h], 6).tolist()}, resolution {res[t, h]:.2e}"
            )
        differ = (free_gap(s, pos, config) > res) & np.any(mine != theirs, axis=-1)
        if differ.any():
            t, h = (int(i) for i in np.argwhere(differ)[0])
            raise AssertionError(
                f"indices: {int(differ.sum())} (t, h) differ from the oracle where the score gap "
                f"exceeds the {dtype} resolution, first sequence {b}@{lo} t={t} h={h}: got "
                f"{mine[t, h].tolist()}, oracle {theirs[t, h].tolist()}"
            )


def assert_forward(runner: Runner, inputs: NSAInputs, config: NSAConfig, out: NSAOutput,
                   branches: bool = True) -> None:
    """Selection by the near-tie policy, then o and each branch's lse vs the oracle on its indices."""
    assert_selection(inputs, config, out.indices, runner.dtype)
    oracle = nsa_attention(inputs, config, out.indices)
    naive = lowprec.naive_forward(inputs, config, out.indices, runner.dtype)
    assert_close("o", out.o, oracle.o, naive.o, runner.dtype, tolerances.K_FORWARD)
    if branches:
        for i, name in enumerate(BRANCHES):
            assert_close(f"lse[{name}]", out.lse[..., i], oracle.lse[..., i], naive.lse[..., i],
                         runner.dtype, tolerances.K_FORWARD)


def assert_last_row(runner: Runner, inputs: NSAInputs, config: NSAConfig, row: NSAOutput) -> None:
    """A decode step's output `row` (o, lse, indices [1, 1, ...]) for the last token of one
    sequence, judged like `assert_forward` judges that row of a prefill: `inputs` [1, S, ...]
    are the float64 values the backend saw, the earlier rows keep the oracle's own selection."""
    oracle = nsa_attention(inputs, config).indices
    indices = np.concatenate([oracle[:, :-1], row.indices], axis=1)
    assert_selection(inputs, config, indices, runner.dtype)
    exact = nsa_attention(inputs, config, indices)
    naive = lowprec.naive_forward(inputs, config, indices, runner.dtype)
    last = slice(-1, None)
    assert_close("o", row.o, exact.o[:, last], naive.o[:, last], runner.dtype, tolerances.K_FORWARD)
    for i, name in enumerate(BRANCHES):
        assert_close(f"lse[{name}]", row.lse[..., i], exact.lse[:, last, ..., i], naive.lse[:, last, ..., i],
                     runner.dtype, tolerances.K_FORWARD)
