"""Deliberately broken backends: the numpy reference with one known bug each.

Each reproduces a trap listed in NSA.md ("Traps seen in earlier implementations") or a rule of
the spec turned around; the meta-test asserts the suite catches every one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from nsa_conformance.lowprec import spans
from nsa_spec.backends.numpy_backend import NumpyBackend
from nsa_spec.blocks import cmp_visible_mask, n_cmp, n_slc_blocks
from nsa_spec.config import NSAConfig
from nsa_spec.contract import DecodeCache, DecodeResult, NSAInputs, NSAOutput
from nsa_spec.counters import tokens_read_table4
from nsa_spec.reference.attention import attend, attention_probs
from nsa_spec.reference.decode import decode_attention, emits
from nsa_spec.reference.nsa import nsa_attention
from nsa_spec.reference.select import importance_scores, top_n


class Broken(NumpyBackend):
    """The numpy backend under another name; subclasses override one stage."""

    name = "broken"
    priority = -1
    bug = ""


def _select(inputs: NSAInputs, config: NSAConfig, choose) -> np.ndarray:
    """Indices [B, T, H, n] from `choose(q, k_cmp, T) -> [T, H, n]`, per sequence."""
    idx = np.full((*np.shape(inputs.q)[:2], np.shape(inputs.k_slc)[2], config.top_n), -1)
    for b, lo, hi, clo, chi in spans(inputs, config):
        idx[b, lo:hi] = choose(np.asarray(inputs.q)[b, lo:hi], np.asarray(inputs.k_cmp)[b, clo:chi], hi - lo)
    return idx


def _scores(q: np.ndarray, k_cmp: np.ndarray, T: int, config: NSAConfig, visible_only: bool = True
            ) -> np.ndarray:
    """Group-summed block scores; with visible_only=False the softmax runs over every token."""
    allowed = cmp_visible_mask(T, k_cmp.shape[0], config)
    if not visible_only:
        allowed = np.ones_like(allowed)
    p, _ = attention_probs(q, k_cmp, allowed[None], config.softmax_scale(q.shape[-1]))
    return importance_scores(p, n_slc_blocks(T, config), config)


class WindowTopLeft(Broken):
    """Window branch with a top-left aligned causal mask: query t sees only the first key of its window."""

    name, bug = "broken-window-top-left", "top-left causal mask in the window branch"

    def forward(self, inputs: NSAInputs, config: NSAConfig) -> NSAOutput:
        out = nsa_attention(inputs, config)
        q, k, v, g = (np.asarray(x) for x in (inputs.q, inputs.k_win, inputs.v_win, inputs.gates))
        T = q.shape[1]
        t = np.arange(T)[:, None]
        first_only = (np.arange(T)[None] == np.maximum(0, t - config.window + 1))[None]
        good = nsa_attention(inputs.replace(gates=np.zeros_like(g) + np.array([0.0, 0.0, 1.0])), config)
        o, lse = np.array(out.o), np.array(out.lse)
        for b in range(q.shape[0]):
            o_bad, lse_bad = attend(q[b], k[b], v[b], first_only, config.softmax_scale(q.shape[-1]))
            o[b] += g[b, ..., 2:3] * (o_bad - good.o[b])
            lse[b, ..., 2] = lse_bad
        return NSAOutput(o=o, lse=lse, indices=out.indices)


class ScoresSeeTheFuture(Broken):
    """Importance scores from a softmax over all compressed tokens, visible or not."""

    name, bug = "broken-scores-see-the-future", "softmax over all compressed tokens in the scores"

    def forward(self, inputs: NSAInputs, config: NSAConfig) -> NSAOutput:
        def choose(q, k_cmp, T):
            return top_n(_scores(q, k_cmp, T, config, visible_only=False), np.arange(T), config)

        return nsa_attention(inputs, config, _select(inputs, config, choose))


def _top_n(scores: np.ndarray, positions: np.ndarray, config: NSAConfig, force_first: bool,
           lower_wins: bool) -> np.ndarray:
    """Eq. 11 with the two rules this file breaks made switchable."""
    n_blocks = scores.shape[-1]
    c = positions[:, None, None] // config.slc_len
    j = np.arange(n_blocks)
    exists = j <= c
    forced = exists & (((j == 0) & force_first) | (j == c) | (j == c - 1))
    key = np.where(forced, np.inf, np.where(exists, scores, -np.inf))
    if lower_wins:
        order = np.argsort(-key, axis=-1, kind="stable")
    else:
        order = n_blocks - 1 - np.argsort(-key[..., ::-1], axis=-1, kind="stable")
    count = np.minimum(c + 1, config.top_n)
    chosen = np.where(np.arange(n_blocks) < count, order, n_blocks)[..., : config.top_n]
    chosen = np.sort(chosen, axis=-1)
    pad = config.top_n - chosen.shape[-1]
    chosen = np.concatenate([chosen, np.full((*chosen.shape[:-1], pad), n_blocks)], axis=-1)
    return np.where(chosen == n_blocks, -1, chosen)


class DropsForcedBlock(Broken):
    """Block 0 is not forced: it is selected only when it scores high enough."""

    name, bug = "broken-drops-forced-block", "block 0 not forced"

    def forward(self, inputs: NSAInputs, config: NSAConfig) -> NSAOutput:
        def choose(q, k_cmp, T):
            return _top_n(_scores(q, k_cmp, T, config), np.arange(T), config, False, True)

        return nsa_attention(inputs, config, _select(inputs, config, choose))


class HigherIndexWinsTies(Broken):
    """Exact score ties go to the higher block index."""

    name, bug = "broken-higher-index-wins-ties", "reversed tie rule"

    def forward(self, inputs: NSAInputs, config: NSAConfig) -> NSAOutput:
        def choose(q, k_cmp, T):
            return _top_n(_scores(q, k_cmp, T, config), np.arange(T), config, True, False)

        return nsa_attention(inputs, config, _select(inputs, config, choose))


class LateEmission(Broken):
    """Decode sees a compressed token one step after it is emitted (its row still empty)."""

    name, bug = "broken-late-emission", "compressed token emitted one step late in decode"

    def decode(self, cache: DecodeCache, q: Any, gates: Any, config: NSAConfig) -> DecodeResult:
        k_cmp, v_cmp = np.array(cache.k_cmp), np.array(cache.v_cmp)
        for b, S in enumerate(np.asarray(cache.lengths)):
            if emits(int(S), config):
                k_cmp[b, n_cmp(int(S), config) - 1] = v_cmp[b, n_cmp(int(S), config) - 1] = 0.0
        return decode_attention(cache.replace(k_cmp=k_cmp, v_cmp=v_cmp), q, gates, config)


class FormulaReads(Broken):
    """Decode reports the paper's Table 4 formula instead of counting the tokens it read."""

    name, bug = "broken-formula-reads", "read counter computed from the formula"

    def decode(self, cache: DecodeCache, q: Any, gates: Any, config: NSAConfig) -> DecodeResult:
        result = decode_attention(cache, q, gates, config)
        table4 = [tokens_read_table4(int(S), config) for S in np.asarray(cache.lengths)]
        reads = np.broadcast_to(np.array(table4)[:, None], result.reads.shape)
        return DecodeResult(out=result.out, reads=reads)


class OneLength(Broken):
    """Decode attends every sequence over the longest sequence's length (padding read as tokens)."""

    name, bug = "broken-one-length", "per-sequence lengths ignored in decode"

    def decode(self, cache: DecodeCache, q: Any, gates: Any, config: NSAConfig) -> DecodeResult:
        longest = np.full_like(np.asarray(cache.lengths), np.max(cache.lengths))
        return decode_attention(cache.replace(lengths=longest), q, gates, config)


class UnusedRowsLeak(Broken):
    """Decode masks the window's unwritten ring rows with weight 0 but still multiplies them in."""

    name, bug = "broken-unused-rows-leak", "0 * NaN from unused window rows reaches the output"

    def decode(self, cache: DecodeCache, q: Any, gates: Any, config: NSAConfig) -> DecodeResult:
        result = decode_attention(cache, q, gates, config)
        v_win = np.asarray(cache.v_win)
        leak = np.einsum("s,bshd->bhd", np.zeros(v_win.shape[1]), v_win)  # [B, H, dv], NaN if any v is
        G = np.shape(q)[2] // v_win.shape[2]
        o = np.asarray(result.out.o) + np.repeat(leak, G, axis=1)[:, None]
        out = NSAOutput(o=o, lse=result.out.lse, indices=result.out.indices)
        return DecodeResult(out=out, reads=result.reads)


class PackedDenseLeak(Broken):
    """Packed sequences attend densely with a block-diagonal mask: 0 * NaN from other sequences leaks."""

    name, bug = "broken-packed-dense-leak", "masked-out values of other packed sequences still multiplied in"

    def forward(self, inputs: NSAInputs, config: NSAConfig) -> NSAOutput:
        out = nsa_attention(inputs, config)
        if inputs.cu_seqlens is None:
            return out
        zero_weights = np.zeros(np.shape(inputs.v_win)[1])
        leak = np.einsum("s,bshd->bhd", zero_weights, np.asarray(inputs.v_win))  # [B, H, dv], NaN if any v is
        G = np.shape(inputs.q)[2] // np.shape(inputs.v_win)[2]
        return NSAOutput(o=out.o + np.repeat(leak, G, axis=1)[:, None], lse=out.lse, indices=out.indices)


BROKEN = [WindowTopLeft, ScoresSeeTheFuture, DropsForcedBlock, HigherIndexWinsTies, LateEmission,
          FormulaReads, OneLength, UnusedRowsLeak, PackedDenseLeak]
