"""Decode, as `nsa_spec.reference.decode`: per-branch caches, the emission schedule, one-token steps.

After appending token t (raw length S = t + 1) a compressed token is emitted iff S >= l and
(S - l) % d == 0, from the last l raw tokens. `prefill` leaves the cache exactly as S single
`decode_step` calls would. `decode_attention` is batched over sequences and kv heads; the tokens
it reports per (batch, kv head) are counted from the rows it gathers: every compressed token,
every window token, and the selected-block rows that enter the softmax.
"""

from __future__ import annotations

from typing import Any

import torch
from nsa_spec.blocks import n_slc_blocks
from nsa_spec.config import NSAConfig
from nsa_spec.contract import DecodeCache, DecodeResult, NSAOutput
from nsa_spec.errors import InvalidInputError
from torch import Tensor

from nsa_torch.ops.attention import attend, attention_probs
from nsa_torch.ops.combine import combine
from nsa_torch.ops.compress import compress
from nsa_torch.ops.nsa import compute_dtype, nsa_forward
from nsa_torch.ops.select import (
    gather_tokens,
    importance_scores,
    overlap_rows,
    selected_attention,
    selected_keys,
    top_n,
)


def empty_cache(batch: int, heads: int, dk: int, dv: int, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> DecodeCache:
    """A cache holding no tokens."""
    k = torch.zeros((batch, 0, heads, dk), dtype=dtype, device=device)
    v = torch.zeros((batch, 0, heads, dv), dtype=dtype, device=device)
    return DecodeCache(k, v, k, v, k, v, k, v, length=0)


def emits(length: int, config: NSAConfig) -> bool:
    """Whether the cache emits a compressed token when its raw length becomes `length`."""
    return length >= config.cmp_len and (length - config.cmp_len) % config.cmp_stride == 0


def append(
    cache: DecodeCache, k_raw: Tensor, v_raw: Tensor, k_slc: Tensor, v_slc: Tensor, k_win: Tensor,
    v_win: Tensor, config: NSAConfig, phi: Any = "mean", phi_params: Any = None,
) -> DecodeCache:
    """Append one token per sequence (each [B, 1, H, .]); emit a compressed token on schedule."""
    for name, x in (("k_raw", k_raw), ("k_slc", k_slc), ("k_win", k_win)):
        if x.shape[1] != 1:
            raise InvalidInputError(
                f"{name} must hold one token, [B, 1, H, dk]: {name}.shape={tuple(x.shape)}"
            )
    raw_k = torch.cat([cache.k_raw, k_raw], 1)
    raw_v = torch.cat([cache.v_raw, v_raw], 1)
    S = cache.length + 1
    k_cmp, v_cmp = cache.k_cmp, cache.v_cmp
    if emits(S, config):
        pk = None if phi_params is None else phi_params["k"]
        pv = None if phi_params is None else phi_params["v"]
        k_cmp = torch.cat([k_cmp, compress(raw_k[:, S - config.cmp_len :], config, phi, pk)], 1)
        v_cmp = torch.cat([v_cmp, compress(raw_v[:, S - config.cmp_len :], config, phi, pv)], 1)
    w = config.window
    return DecodeCache(
        raw_k, raw_v, k_cmp, v_cmp, torch.cat([cache.k_slc, k_slc], 1), torch.cat([cache.v_slc, v_slc], 1),
        torch.cat([cache.k_win, k_win], 1)[:, -w:], torch.cat([cache.v_win, v_win], 1)[:, -w:], length=S,
    )


def decode_attention(cache: DecodeCache, q: Tensor, gates: Tensor, config: NSAConfig) -> DecodeResult:
    """Attention of the newest token (position S - 1): q [B, 1, HQ, dk], gates [B, 1, HQ, 3].

    Returns o [B, 1, HQ, dv], lse [B, 1, HQ, 3], indices [B, 1, H, n] and reads [B, H] (long).
    """
    S = cache.length
    if S < 1:
        raise InvalidInputError("cache must hold at least one token: cache.length=0")
    B, one, HQ, dk = q.shape
    if one != 1:
        raise InvalidInputError(f"q must hold one token, [B, 1, HQ, dk]: q.shape={tuple(q.shape)}")
    H, dv = cache.k_slc.shape[2], cache.v_slc.shape[3]
    if cache.k_slc.shape[1] != S:
        raise InvalidInputError(
            f"cache.k_slc must hold cache.length={S} tokens: k_slc.shape={tuple(cache.k_slc.shape)}"
        )
    G = HQ // H
    work = compute_dtype(q.dtype)
    scale = config.softmax_scale(dk)
    qg = q.to(work).reshape(B, 1, H, G, dk)
    k_cmp, v_cmp, k_win, v_win = (
        x.to(work).permute(0, 2, 1, 3) for x in (cache.k_cmp, cache.v_cmp, cache.k_win, cache.v_win)
    )
    every = torch.ones((), dtype=torch.bool, device=q.device)

    p_cmp, lse_cmp = attention_probs(qg, k_cmp, every, scale)
    o_cmp = torch.einsum("bchgs,bhsd->bchgd", p_cmp, v_cmp)
    positions = torch.full((1,), S - 1, device=q.device)
    rows = overlap_rows(k_cmp.shape[2], n_slc_blocks(S, config), config, qg)
    indices = top_n(importance_scores(p_cmp, rows), positions, config)
    block_ids, slc_rows = selected_keys(indices, positions, config)
    o_slc, lse_slc = selected_attention(
        qg, gather_tokens(cache.k_slc, block_ids, config), gather_tokens(cache.v_slc, block_ids, config),
        slc_rows, scale,
    )
    o_win, lse_win = attend(qg, k_win, v_win, every, scale, may_be_empty=False)

    o = combine(o_cmp, o_slc, o_win, gates.to(work).reshape(B, 1, H, G, 3))
    reads = k_cmp.shape[2] + slc_rows.sum(dim=-1)[:, 0] + k_win.shape[2]
    out = NSAOutput(
        o=o.reshape(B, 1, HQ, dv).to(q.dtype),
        lse=torch.stack([lse_cmp, lse_slc, lse_win], dim=-1).reshape(B, 1, HQ, 3),
        indices=indices,
    )
    return DecodeResult(out=out, reads=reads)


def decode_step(
    cache: DecodeCache, q: Tensor, k_raw: Tensor, v_raw: Tensor, k_slc: Tensor, v_slc: Tensor,
    k_win: Tensor, v_win: Tensor, gates: Tensor, config: NSAConfig, phi: Any = "mean",
    phi_params: Any = None,
) -> tuple[DecodeResult, DecodeCache]:
    """Append the new token's keys/values, then attend from it: returns (result, new cache)."""
    cache = append(cache, k_raw, v_raw, k_slc, v_slc, k_win, v_win, config, phi, phi_params)
    return decode_attention(cache, q, gates, config), cache


def prefill(
    q: Tensor, k_raw: Tensor, v_raw: Tensor, k_slc: Tensor, v_slc: Tensor, k_win: Tensor,
    v_win: Tensor, gates: Tensor, config: NSAConfig, phi: Any = "mean", phi_params: Any = None,
) -> tuple[NSAOutput, DecodeCache]:
    """Attend over a whole prompt and return the cache decode continues from."""
    out = nsa_forward(q, k_raw, v_raw, k_slc, v_slc, k_win, v_win, gates, config, phi, phi_params)
    pk = None if phi_params is None else phi_params["k"]
    pv = None if phi_params is None else phi_params["v"]
    w = config.window
    cache = DecodeCache(
        k_raw, v_raw, compress(k_raw, config, phi, pk), compress(v_raw, config, phi, pv),
        k_slc, v_slc, k_win[:, -w:], v_win[:, -w:], length=q.shape[1],
    )
    return out, cache
