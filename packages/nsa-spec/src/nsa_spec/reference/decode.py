"""Decode (NSA.md, Decode): the cache layout, the emission schedule and one-token steps.

The cache (`nsa_spec.contract.DecodeCache`) is preallocated storage for a batch of sequences
with their own lengths S_b: rings of the last l raw and the last w win tokens (position p in
row p % l, p % w), the compressed tokens and the slc stream up to a capacity C. `append` writes
token position p = S_b of every sequence and sets S_b = p + 1; sequence b emits a compressed
token when S_b >= l and (S_b - l) % d == 0, phi of its last l raw tokens in position order.
Rows at or past a sequence's length are never read. `prefill` leaves the cache exactly as S
single `decode_step` calls would. `decode_attention` reports the tokens it gathered per
(batch, kv head): that count is measured from the gather, not computed from a formula.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nsa_spec.blocks import n_cmp, n_slc_blocks
from nsa_spec.config import NSAConfig
from nsa_spec.contract import CACHE_ARRAYS, DecodeCache, DecodeResult, NSAOutput, validate_cache
from nsa_spec.errors import InvalidInputError
from nsa_spec.reference.attention import attend, attention_probs
from nsa_spec.reference.combine import combine
from nsa_spec.reference.compress import compress, split_phi_params
from nsa_spec.reference.nsa import nsa_forward
from nsa_spec.reference.select import importance_scores, top_n

TOKEN_STREAMS = ("k_raw", "v_raw", "k_slc", "v_slc", "k_win", "v_win")
"""The per-token streams `append` writes, in argument order."""


def _check_capacity(capacity: Any) -> int:
    if isinstance(capacity, bool) or not isinstance(capacity, int | np.integer) or capacity < 1:
        raise InvalidInputError(f"capacity must be an int >= 1 (tokens per sequence): capacity={capacity!r}")
    return int(capacity)


def empty_cache(batch: int, heads: int, dk: int, dv: int, capacity: int, config: NSAConfig) -> DecodeCache:
    """Storage for `batch` sequences of up to `capacity` tokens each, holding none (zeros)."""
    C = _check_capacity(capacity)
    l, w, N = config.cmp_len, config.window, n_cmp(C, config)

    def rows(n: int, dim: int) -> np.ndarray:
        return np.zeros((batch, n, heads, dim))

    return DecodeCache(rows(l, dk), rows(l, dv), rows(N, dk), rows(N, dv), rows(C, dk), rows(C, dv),
                       rows(w, dk), rows(w, dv), lengths=np.zeros(batch, dtype=np.int64))


def emits(length: int, config: NSAConfig) -> bool:
    """Whether a sequence emits a compressed token when its raw length becomes `length`."""
    return length >= config.cmp_len and (length - config.cmp_len) % config.cmp_stride == 0


def host_lengths(cache: DecodeCache, config: NSAConfig) -> np.ndarray:
    """The checked layout's lengths as int64, each in 0..capacity."""
    C = validate_cache(cache, config)[1]
    lengths = np.asarray(cache.lengths)
    if not np.issubdtype(lengths.dtype, np.integer) or np.any(lengths < 0) or np.any(lengths > C):
        raise InvalidInputError(
            f"cache.lengths must be ints in 0..capacity={C}: cache.lengths={lengths.tolist()}"
        )
    return lengths.astype(np.int64)


def used_rows(cache: DecodeCache, config: NSAConfig) -> dict[str, np.ndarray]:
    """Bool [B, rows] per storage field: the rows that hold one of the sequence's tokens.

    raw: the last min(l, S_b) positions' ring rows; cmp: rows < N_cmp(S_b); slc: rows < S_b;
    win: the last min(w, S_b) positions' ring rows. Every other row is never read.
    """
    lengths = host_lengths(cache, config)[:, None]
    n_cmp_b = np.where(lengths < config.cmp_len, 0, (lengths - config.cmp_len) // config.cmp_stride + 1)
    ring_l, ring_w = np.arange(config.cmp_len)[None], np.arange(config.window)[None]
    masks = {
        "raw": ring_l < lengths, "cmp": np.arange(cache.k_cmp.shape[1])[None] < n_cmp_b,
        "slc": np.arange(cache.capacity)[None] < lengths, "win": ring_w < lengths,
    }
    return {name: masks[name[2:]] for name in CACHE_ARRAYS}


def positions_of(cache: DecodeCache, name: str, b: int, config: NSAConfig) -> np.ndarray:
    """Rows of storage field `name` holding sequence b's tokens, in position (token) order."""
    S = int(host_lengths(cache, config)[b])
    if name in ("k_raw", "v_raw", "k_win", "v_win"):
        ring = config.cmp_len if name.endswith("raw") else config.window
        return np.arange(max(0, S - ring), S) % ring
    return np.arange(n_cmp(S, config) if name.endswith("cmp") else S)


def resize(cache: DecodeCache, capacity: int, config: NSAConfig) -> DecodeCache:
    """The same sequences in storage of another capacity (at least the longest length)."""
    lengths = host_lengths(cache, config)
    C = _check_capacity(capacity)
    if lengths.max(initial=0) > C:
        raise InvalidInputError(
            f"capacity must hold the longest sequence: capacity={C}, cache.lengths={lengths.tolist()}"
        )
    B, _, H, dk = cache.k_slc.shape
    out = empty_cache(B, H, dk, cache.v_slc.shape[3], C, config)
    keep_slc, keep_cmp = min(C, cache.capacity), min(n_cmp(C, config), cache.k_cmp.shape[1])
    for name in ("k_slc", "v_slc"):
        getattr(out, name)[:, :keep_slc] = getattr(cache, name)[:, :keep_slc]
    for name in ("k_cmp", "v_cmp"):
        getattr(out, name)[:, :keep_cmp] = getattr(cache, name)[:, :keep_cmp]
    for name in ("k_raw", "v_raw", "k_win", "v_win"):
        getattr(out, name)[...] = getattr(cache, name)
    return out.replace(lengths=lengths.copy())


def append(
    cache: DecodeCache, k_raw: Any, v_raw: Any, k_slc: Any, v_slc: Any, k_win: Any, v_win: Any,
    config: NSAConfig, phi: str = "mean", phi_params: Any = None,
) -> DecodeCache:
    """Append one token to every sequence (each array [B, 1, H, .]); emit compressed tokens on
    each sequence's schedule. Returns a new cache; storage doubles when a sequence would
    outgrow it."""
    lengths = host_lengths(cache, config)
    B, _, H, dk = cache.k_slc.shape
    dv = cache.v_slc.shape[3]
    tokens = dict(zip(TOKEN_STREAMS, (k_raw, v_raw, k_slc, v_slc, k_win, v_win), strict=True))
    for name, x in tokens.items():
        dim = "dk" if name.startswith("k") else "dv"
        expected = (B, 1, H, dk if dim == "dk" else dv)
        if tuple(np.shape(x)) != expected:
            raise InvalidInputError(
                f"{name} must hold one token per sequence, [B, 1, H, {dim}] = {list(expected)} like the "
                f"cache: {name}.shape={tuple(np.shape(x))}"
            )
    C = cache.capacity
    out = resize(cache, max(2 * C, 1), config) if lengths.max() >= C else resize(cache, C, config)
    pk, pv = split_phi_params(phi_params)
    l, w = config.cmp_len, config.window
    for b, p in enumerate(lengths):
        S = int(p) + 1
        out.k_raw[b, p % l], out.v_raw[b, p % l] = tokens["k_raw"][b, 0], tokens["v_raw"][b, 0]
        out.k_slc[b, p], out.v_slc[b, p] = tokens["k_slc"][b, 0], tokens["v_slc"][b, 0]
        out.k_win[b, p % w], out.v_win[b, p % w] = tokens["k_win"][b, 0], tokens["v_win"][b, 0]
        if emits(S, config):
            ring = np.arange(S - l, S) % l  # the last l raw tokens, in position order
            i = n_cmp(S, config) - 1
            out.k_cmp[b, i] = compress(out.k_raw[b : b + 1, ring], config, phi, pk)[0, 0]
            out.v_cmp[b, i] = compress(out.v_raw[b : b + 1, ring], config, phi, pv)[0, 0]
    return out.replace(lengths=lengths + 1)


def decode_attention(cache: DecodeCache, q: Any, gates: Any, config: NSAConfig) -> DecodeResult:
    """Attention of each sequence's newest token (position S_b - 1) over its own S_b tokens.

    q [B, 1, HQ, dk], gates [B, 1, HQ, 3]. Reads only rows below each sequence's length: its
    N_cmp(S_b) compressed tokens, the selected blocks' slc rows clamped to S_b, and the ring rows
    of its last min(w, S_b) win tokens; `reads` [B, H] counts those rows.
    """
    lengths = host_lengths(cache, config)
    if np.any(lengths < 1):
        raise InvalidInputError(
            f"cache must hold at least one token per sequence: cache.lengths={lengths.tolist()}"
        )
    B, _, H, dk = cache.k_slc.shape
    q_shape = tuple(np.shape(q))
    if len(q_shape) != 4 or q_shape[:2] != (B, 1) or q_shape[3] != dk or q_shape[2] < 1 or q_shape[2] % H:
        raise InvalidInputError(
            f"q must have shape [B, 1, HQ, dk] = [{B}, 1, HQ, {dk}] with HQ a multiple of the "
            f"cache's H={H}: q.shape={q_shape}"
        )
    HQ = q_shape[2]
    if tuple(np.shape(gates)) != (B, 1, HQ, 3):
        raise InvalidInputError(
            f"gates must have shape [B, 1, HQ, 3] = {[B, 1, HQ, 3]}: gates.shape={tuple(np.shape(gates))}"
        )
    G = HQ // H
    scale = config.softmax_scale(dk)
    l_slc, w = config.slc_len, config.window
    outs, lses, idxs, reads = [], [], [], []
    for b, S in enumerate(int(s) for s in lengths):
        qb = q[b]  # [1, HQ, dk]
        cmp_rows = np.arange(n_cmp(S, config))  # every compressed token is visible to t = S-1
        k_cmp, v_cmp = cache.k_cmp[b, cmp_rows], cache.v_cmp[b, cmp_rows]
        ones = np.ones((1, 1, len(cmp_rows)), dtype=bool)
        p_cmp, lse_cmp = attention_probs(qb, k_cmp, ones, scale)
        o_cmp = np.einsum("hgts,shd->thgd", p_cmp, v_cmp).reshape(1, HQ, -1)
        scores = importance_scores(p_cmp, n_slc_blocks(S, config), config)
        idx = top_n(scores, np.array([S - 1]), config)  # [1, H, n]
        o_slc = np.zeros_like(o_cmp)
        lse_slc = np.zeros((1, HQ))
        slc_reads = np.zeros(H, dtype=np.int64)
        for h in range(H):
            blocks = idx[0, h][idx[0, h] >= 0]
            rows = np.concatenate([np.arange(j * l_slc, min((j + 1) * l_slc, S)) for j in blocks])
            heads = slice(h * G, (h + 1) * G)
            o_h, lse_h = attend(
                qb[:, heads], cache.k_slc[b, rows, h : h + 1], cache.v_slc[b, rows, h : h + 1],
                np.ones((1, 1, len(rows)), dtype=bool), scale,
            )
            o_slc[:, heads], lse_slc[:, heads] = o_h, lse_h
            slc_reads[h] = len(rows)
        win_rows = np.arange(max(0, S - w), S) % w  # ring rows of the last min(w, S) tokens, oldest first
        o_win, lse_win = attend(
            qb, cache.k_win[b, win_rows], cache.v_win[b, win_rows],
            np.ones((1, 1, len(win_rows)), dtype=bool), scale,
        )
        outs.append(combine(o_cmp, o_slc, o_win, gates[b]))
        lses.append(np.stack([lse_cmp, lse_slc, lse_win], axis=-1))
        idxs.append(idx)
        reads.append(len(cmp_rows) + slc_reads + len(win_rows))
    out = NSAOutput(o=np.stack(outs), lse=np.stack(lses), indices=np.stack(idxs))
    return DecodeResult(out=out, reads=np.stack(reads))


def decode_step(
    cache: DecodeCache, q: Any, k_raw: Any, v_raw: Any, k_slc: Any, v_slc: Any, k_win: Any,
    v_win: Any, gates: Any, config: NSAConfig, phi: str = "mean", phi_params: Any = None,
) -> tuple[DecodeResult, DecodeCache]:
    """Append the new token's keys/values, then attend from it: returns (result, new cache)."""
    cache = append(cache, k_raw, v_raw, k_slc, v_slc, k_win, v_win, config, phi, phi_params)
    return decode_attention(cache, q, gates, config), cache


def from_streams(
    k_raw: Any, v_raw: Any, k_slc: Any, v_slc: Any, k_win: Any, v_win: Any, config: NSAConfig,
    phi: str = "mean", phi_params: Any = None, capacity: int | None = None,
) -> DecodeCache:
    """The cache of a batch of T-token sequences (streams [B, T, H, .]), exactly as T `append`
    calls leave it, in storage of `capacity` tokens per sequence (default T)."""
    B, T, H, dk = np.shape(k_slc)
    C = T if capacity is None else _check_capacity(capacity)
    if C < T:
        raise InvalidInputError(f"capacity must hold the prompt: capacity={C}, T={T}")
    cache = empty_cache(B, H, dk, np.shape(v_slc)[3], C, config)
    pk, pv = split_phi_params(phi_params)
    N = n_cmp(T, config)
    cache.k_cmp[:, :N] = compress(k_raw, config, phi, pk)
    cache.v_cmp[:, :N] = compress(v_raw, config, phi, pv)
    cache.k_slc[:, :T], cache.v_slc[:, :T] = k_slc, v_slc
    l, w = config.cmp_len, config.window
    raw, win = np.arange(max(0, T - l), T), np.arange(max(0, T - w), T)
    cache.k_raw[:, raw % l], cache.v_raw[:, raw % l] = np.asarray(k_raw)[:, raw], np.asarray(v_raw)[:, raw]
    cache.k_win[:, win % w], cache.v_win[:, win % w] = np.asarray(k_win)[:, win], np.asarray(v_win)[:, win]
    return cache.replace(lengths=np.full(B, T, dtype=np.int64))


def prefill(
    q: Any, k_raw: Any, v_raw: Any, k_slc: Any, v_slc: Any, k_win: Any, v_win: Any, gates: Any,
    config: NSAConfig, phi: str = "mean", phi_params: Any = None, capacity: int | None = None,
) -> tuple[NSAOutput, DecodeCache]:
    """Attend over a whole prompt of T tokens (one length for the batch) and return the cache
    decode continues from (`from_streams`), of `capacity` tokens per sequence (default T)."""
    out = nsa_forward(q, k_raw, v_raw, k_slc, v_slc, k_win, v_win, gates, config, phi, phi_params)
    cache = from_streams(k_raw, v_raw, k_slc, v_slc, k_win, v_win, config, phi, phi_params, capacity)
    return out, cache


def join(caches: Sequence[DecodeCache], config: NSAConfig) -> DecodeCache:
    """One batch of every sequence of `caches`, in order, in storage of the largest capacity."""
    if not caches:
        raise InvalidInputError("join needs at least one cache: caches=[]")
    shapes = [(c.k_slc.shape[2], c.k_slc.shape[3], c.v_slc.shape[3]) for c in caches]
    if len(set(shapes)) > 1:
        raise InvalidInputError(
            f"joined caches must have the same kv heads and head dims (H, dk, dv): got {shapes}"
        )
    C = max(c.capacity for c in caches)
    parts = [resize(c, C, config) for c in caches]
    return DecodeCache(
        *(np.concatenate([getattr(c, n) for c in parts]) for n in CACHE_ARRAYS),
        lengths=np.concatenate([c.lengths for c in parts]),
    )


def batch_indices_of(batch_indices: Any, batch: int) -> np.ndarray:
    """Checked host indices for `select`: 1-D ints in 0..batch-1, at least one."""
    idx = np.asarray(batch_indices)
    if idx.ndim != 1 or idx.size < 1 or not np.issubdtype(idx.dtype, np.integer) or np.any(idx < 0) \
            or np.any(idx >= batch):
        raise InvalidInputError(
            f"batch_indices must be a non-empty 1-D list of ints in 0..{batch - 1} (B={batch}): "
            f"batch_indices={idx.tolist()}"
        )
    return idx.astype(np.int64)


def select(cache: DecodeCache, batch_indices: Any, config: NSAConfig) -> DecodeCache:
    """The sequences at `batch_indices`, in that order (drop, keep, reorder or repeat them)."""
    host_lengths(cache, config)
    idx = batch_indices_of(batch_indices, cache.k_slc.shape[0])
    return DecodeCache(*(np.asarray(getattr(cache, n))[idx] for n in CACHE_ARRAYS),
                       lengths=np.asarray(cache.lengths)[idx].astype(np.int64))
