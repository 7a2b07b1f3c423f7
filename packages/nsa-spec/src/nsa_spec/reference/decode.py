"""Decode (NSA.md, Decode): per-branch caches, the emission schedule and one-token steps.

After appending token t (raw length S = t + 1) a compressed token is emitted iff S >= l and
(S - l) % d == 0, from the last l raw tokens. `prefill` leaves the cache exactly as S single
`decode_step` calls would. `decode_attention` reports the tokens it gathered per (batch, kv
head): that count is measured from the gather, not computed from a formula.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nsa_spec.blocks import n_slc_blocks
from nsa_spec.config import NSAConfig
from nsa_spec.contract import DecodeCache, DecodeResult, NSAOutput
from nsa_spec.errors import InvalidInputError
from nsa_spec.reference.attention import attend, attention_probs
from nsa_spec.reference.combine import combine
from nsa_spec.reference.compress import compress, split_phi_params
from nsa_spec.reference.nsa import nsa_forward
from nsa_spec.reference.select import importance_scores, top_n


def empty_cache(batch: int, heads: int, dk: int, dv: int) -> DecodeCache:
    """A cache holding no tokens."""
    k = np.zeros((batch, 0, heads, dk))
    v = np.zeros((batch, 0, heads, dv))
    return DecodeCache(k, v, k, v, k, v, k, v, length=0)


def emits(length: int, config: NSAConfig) -> bool:
    """Whether the cache emits a compressed token when its raw length becomes `length`."""
    return length >= config.cmp_len and (length - config.cmp_len) % config.cmp_stride == 0


def append(
    cache: DecodeCache, k_raw: Any, v_raw: Any, k_slc: Any, v_slc: Any, k_win: Any, v_win: Any,
    config: NSAConfig, phi: str = "mean", phi_params: Any = None,
) -> DecodeCache:
    """Append one token per sequence (each array [B, 1, H, .]); emit a compressed token on schedule."""
    B, _, H, dk = cache.k_slc.shape
    dv = cache.v_slc.shape[3]
    tokens = {"k_raw": k_raw, "v_raw": v_raw, "k_slc": k_slc, "v_slc": v_slc, "k_win": k_win, "v_win": v_win}
    for name, x in tokens.items():
        dim = "dk" if name.startswith("k") else "dv"
        expected = (B, 1, H, dk if dim == "dk" else dv)
        if tuple(np.shape(x)) != expected:
            raise InvalidInputError(
                f"{name} must hold one token per sequence, [B, 1, H, {dim}] = {list(expected)} like the "
                f"cache: {name}.shape={tuple(np.shape(x))}"
            )
    pk, pv = split_phi_params(phi_params)
    raw_k = np.concatenate([cache.k_raw, k_raw], axis=1)
    raw_v = np.concatenate([cache.v_raw, v_raw], axis=1)
    S = cache.length + 1
    k_cmp, v_cmp = cache.k_cmp, cache.v_cmp
    if emits(S, config):
        tail = slice(S - config.cmp_len, S)
        k_cmp = np.concatenate([k_cmp, compress(raw_k[:, tail], config, phi, pk)], axis=1)
        v_cmp = np.concatenate([v_cmp, compress(raw_v[:, tail], config, phi, pv)], axis=1)
    win = slice(-config.window, None)
    return DecodeCache(
        raw_k, raw_v, k_cmp, v_cmp,
        np.concatenate([cache.k_slc, k_slc], axis=1), np.concatenate([cache.v_slc, v_slc], axis=1),
        np.concatenate([cache.k_win, k_win], axis=1)[:, win],
        np.concatenate([cache.v_win, v_win], axis=1)[:, win],
        length=S,
    )


def decode_attention(cache: DecodeCache, q: Any, gates: Any, config: NSAConfig) -> DecodeResult:
    """Attention of the newest token (position S - 1) over the cache.

    q [B, 1, HQ, dk], gates [B, 1, HQ, 3].
    """
    S = cache.length
    if S < 1:
        raise InvalidInputError("cache must hold at least one token: cache.length=0")
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
    outs, lses, idxs, reads = [], [], [], []
    for b in range(B):
        qb = q[b]  # [1, HQ, dk]
        cmp_rows = np.arange(cache.k_cmp.shape[1])  # every compressed token is visible to t = S-1
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
            rows = np.concatenate(
                [np.arange(j * config.slc_len, min((j + 1) * config.slc_len, S)) for j in blocks]
            )
            heads = slice(h * G, (h + 1) * G)
            o_h, lse_h = attend(
                qb[:, heads], cache.k_slc[b, rows, h : h + 1], cache.v_slc[b, rows, h : h + 1],
                np.ones((1, 1, len(rows)), dtype=bool), scale,
            )
            o_slc[:, heads], lse_slc[:, heads] = o_h, lse_h
            slc_reads[h] = len(rows)
        win_rows = np.arange(cache.k_win.shape[1])
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


def prefill(
    q: Any, k_raw: Any, v_raw: Any, k_slc: Any, v_slc: Any, k_win: Any, v_win: Any, gates: Any,
    config: NSAConfig, phi: str = "mean", phi_params: Any = None,
) -> tuple[NSAOutput, DecodeCache]:
    """Attend over a whole prompt and return the cache decode continues from."""
    out = nsa_forward(q, k_raw, v_raw, k_slc, v_slc, k_win, v_win, gates, config, phi, phi_params)
    pk, pv = split_phi_params(phi_params)
    win = slice(-config.window, None)
    cache = DecodeCache(
        np.asarray(k_raw), np.asarray(v_raw),
        compress(k_raw, config, phi, pk), compress(v_raw, config, phi, pv),
        np.asarray(k_slc), np.asarray(v_slc), np.asarray(k_win)[:, win], np.asarray(v_win)[:, win],
        length=q.shape[1],
    )
    return out, cache
