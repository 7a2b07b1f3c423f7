"""Decode, as `nsa_spec.reference.decode`: the cache layout v2, per-sequence emission, batched steps.

The cache is preallocated storage for a batch of sequences with their own lengths (a device
tensor): rings of the last l raw and w win tokens (position p in row p % l, p % w), the
compressed tokens and the slc stream up to the capacity. `append` writes in place and
`decode_attention` masks every row at or past a sequence's length, both without reading a
value back to the host (emission is a `torch.where`, not a branch), so a step can be captured
in a CUDA graph. The tokens `decode_attention` reports per (batch, kv head) are counted from the
masks of the rows it gathers: the compressed tokens, the selected-block rows that enter the
softmax and the window rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from nsa_spec.blocks import n_cmp, n_slc_blocks
from nsa_spec.config import NSAConfig
from nsa_spec.contract import CACHE_ARRAYS, DecodeCache, DecodeResult, NSAOutput, validate_cache
from nsa_spec.errors import InvalidInputError
from nsa_spec.reference.decode import TOKEN_STREAMS, batch_indices_of
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


def _check_capacity(capacity: Any) -> int:
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise InvalidInputError(f"capacity must be an int >= 1 (tokens per sequence): capacity={capacity!r}")
    return capacity


def empty_cache(batch: int, heads: int, dk: int, dv: int, capacity: int, config: NSAConfig,
                dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> DecodeCache:
    """Storage for `batch` sequences of up to `capacity` tokens each, holding none (zeros)."""
    C = _check_capacity(capacity)

    def rows(n: int, dim: int) -> Tensor:
        return torch.zeros((batch, n, heads, dim), dtype=dtype, device=device)

    l, w, N = config.cmp_len, config.window, n_cmp(C, config)
    return DecodeCache(rows(l, dk), rows(l, dv), rows(N, dk), rows(N, dv), rows(C, dk), rows(C, dv),
                       rows(w, dk), rows(w, dv), lengths=torch.zeros(batch, dtype=torch.long, device=device))


def resize(cache: DecodeCache, capacity: int, config: NSAConfig) -> DecodeCache:
    """The same sequences in new storage of `capacity` tokens per sequence (a copy).

    The caller makes sure every sequence fits (this reads no length back from the device).
    """
    B, C_old, H, dk = validate_cache(cache, config)[:4]
    C = _check_capacity(capacity)
    out = empty_cache(B, H, dk, cache.v_slc.shape[3], C, config, cache.k_slc.dtype, cache.k_slc.device)
    keep_slc, keep_cmp = min(C, C_old), min(out.k_cmp.shape[1], cache.k_cmp.shape[1])
    for name in ("k_slc", "v_slc"):
        getattr(out, name)[:, :keep_slc] = getattr(cache, name)[:, :keep_slc]
    for name in ("k_cmp", "v_cmp"):
        getattr(out, name)[:, :keep_cmp] = getattr(cache, name)[:, :keep_cmp]
    for name in ("k_raw", "v_raw", "k_win", "v_win"):
        getattr(out, name).copy_(getattr(cache, name))
    return out.replace(lengths=cache.lengths.clone())


def _write(x: Tensor, batch: Tensor, rows: Tensor, values: Tensor) -> None:
    """x[b, rows[b]] = values[b] for every b: x [B, R, H, d], rows [B], values [B, H, d]."""
    x.index_put_((batch, rows), values.to(x.dtype))


def append(
    cache: DecodeCache, k_raw: Tensor, v_raw: Tensor, k_slc: Tensor, v_slc: Tensor, k_win: Tensor,
    v_win: Tensor, config: NSAConfig, phi: Any = "mean", phi_params: Any = None,
) -> DecodeCache:
    """Append one token to every sequence (each [B, 1, H, .]) in place and return the cache.

    Token position p = S_b goes to raw row p % l, slc row p and win row p % w; then S_b += 1 and
    where S_b >= l and (S_b - l) % d == 0, compressed token N_cmp(S_b) - 1 = phi of the raw ring
    in position order. The caller makes sure S_b < capacity (no length is read on the host).
    """
    B, _, H, dk = validate_cache(cache, config)[:4]
    dv = cache.v_slc.shape[3]
    tokens = dict(zip(TOKEN_STREAMS, (k_raw, v_raw, k_slc, v_slc, k_win, v_win), strict=True))
    for name, x in tokens.items():
        dim = "dk" if name.startswith("k") else "dv"
        expected = (B, 1, H, dk if dim == "dk" else dv)
        if tuple(x.shape) != expected:
            raise InvalidInputError(
                f"{name} must hold one token per sequence, [B, 1, H, {dim}] = {list(expected)} like the "
                f"cache: {name}.shape={tuple(x.shape)}"
            )
    l, d, w = config.cmp_len, config.cmp_stride, config.window
    p = cache.lengths  # [B] positions of the new tokens
    batch = torch.arange(B, device=p.device)
    for name, rows in (("raw", p % l), ("slc", p), ("win", p % w)):
        _write(getattr(cache, f"k_{name}"), batch, rows, tokens[f"k_{name}"][:, 0])
        _write(getattr(cache, f"v_{name}"), batch, rows, tokens[f"v_{name}"][:, 0])
    if cache.k_cmp.shape[1]:
        filled = p + 1  # S_b after this token
        emit = ((filled >= l) & ((filled - l) % d == 0))[:, None, None]  # [B, 1, 1]
        ring = (filled[:, None] - l + torch.arange(l, device=p.device)) % l  # [B, l] rows in position order
        row = torch.clamp((filled - l).div(d, rounding_mode="floor"), min=0)  # N_cmp(S_b) - 1 if emitting
        for name, part in (("k_cmp", "k"), ("v_cmp", "v")):
            raw = getattr(cache, f"{part}_raw")[batch[:, None], ring]  # [B, l, H, d]
            new = compress(raw, config, phi, None if phi_params is None else phi_params[part])[:, 0]
            x = getattr(cache, name)
            _write(x, batch, row, torch.where(emit, new.to(x.dtype), x[batch, row]))
    p.add_(1)
    return cache


def decode_attention(cache: DecodeCache, q: Tensor, gates: Tensor, config: NSAConfig) -> DecodeResult:
    """Attention of each sequence's newest token (position S_b - 1) over its own S_b tokens.

    q [B, 1, HQ, dk], gates [B, 1, HQ, 3]. Returns o [B, 1, HQ, dv], lse [B, 1, HQ, 3], indices
    [B, 1, H, n] and reads [B, H] (long). Rows at or past a sequence's length are masked out of
    every score and zeroed in every value, so whatever they hold (NaN included) is never read.
    """
    B, C, H, dk = validate_cache(cache, config)[:4]
    dv = cache.v_slc.shape[3]
    if q.dim() != 4 or tuple(q.shape[:2]) != (B, 1) or q.shape[3] != dk or q.shape[2] < 1 or q.shape[2] % H:
        raise InvalidInputError(
            f"q must have shape [B, 1, HQ, dk] = [{B}, 1, HQ, {dk}] with HQ a multiple of the "
            f"cache's H={H}: q.shape={tuple(q.shape)}"
        )
    HQ = q.shape[2]
    if tuple(gates.shape) != (B, 1, HQ, 3):
        raise InvalidInputError(
            f"gates must have shape [B, 1, HQ, 3] = {[B, 1, HQ, 3]}: gates.shape={tuple(gates.shape)}"
        )
    G = HQ // H
    work = compute_dtype(q.dtype)
    scale = config.softmax_scale(dk)
    l, d, w = config.cmp_len, config.cmp_stride, config.window
    lengths = cache.lengths  # [B]
    qg = q.to(work).reshape(B, 1, H, G, dk)

    def keys(x: Tensor, ok: Tensor, zero: bool) -> Tensor:
        """x [B, R, H, .] -> [B, H, R, .] in the work dtype, rows where ~ok [B, R] zeroed if `zero`."""
        x = torch.where(ok[:, :, None, None], x, 0) if zero else x
        return x.to(work).permute(0, 2, 1, 3)

    n_cmp_b = torch.where(lengths >= l, (lengths - l).div(d, rounding_mode="floor") + 1, 0)  # [B]
    cmp_ok = torch.arange(cache.k_cmp.shape[1], device=lengths.device) < n_cmp_b[:, None]  # [B, C_cmp]
    p_cmp, lse_cmp = attention_probs(qg, keys(cache.k_cmp, cmp_ok, False), cmp_ok[:, None, None, None], scale)
    o_cmp = torch.einsum("bchgs,bhsd->bchgd", p_cmp, keys(cache.v_cmp, cmp_ok, True))

    positions = (lengths - 1)[:, None]  # [B, 1]
    rows = overlap_rows(cache.k_cmp.shape[1], n_slc_blocks(C, config), config, qg)
    indices = top_n(importance_scores(p_cmp, rows), positions, config)  # [B, 1, H, n]
    block_ids, slc_ok = selected_keys(indices, positions, config)  # slc_ok [B, 1, H, n*l']
    v_sel = torch.where(slc_ok[..., None], gather_tokens(cache.v_slc, block_ids, config), 0)
    k_sel = gather_tokens(cache.k_slc, block_ids, config)  # [B, 1, H, n*l', dk]
    o_slc, lse_slc = selected_attention(qg, k_sel, v_sel, slc_ok, scale)

    win_ok = torch.arange(w, device=lengths.device) < lengths[:, None]  # [B, w]: the last min(w, S_b)
    o_win, lse_win = attend(qg, keys(cache.k_win, win_ok, False), keys(cache.v_win, win_ok, True),
                            win_ok[:, None, None, None], scale, may_be_empty=False)

    o = combine(o_cmp, o_slc, o_win, gates.to(work).reshape(B, 1, H, G, 3))
    reads = cmp_ok.sum(-1)[:, None] + slc_ok.sum(-1)[:, 0] + win_ok.sum(-1)[:, None]
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
    """Append the new token's keys/values (in place), then attend from it: (result, cache)."""
    cache = append(cache, k_raw, v_raw, k_slc, v_slc, k_win, v_win, config, phi, phi_params)
    return decode_attention(cache, q, gates, config), cache


def from_streams(
    k_raw: Tensor, v_raw: Tensor, k_slc: Tensor, v_slc: Tensor, k_win: Tensor, v_win: Tensor,
    config: NSAConfig, phi: Any = "mean", phi_params: Any = None, capacity: int | None = None,
    compressed: tuple[Tensor, Tensor] | None = None,
) -> DecodeCache:
    """The cache of a batch of T-token sequences (streams [B, T, H, .]), exactly as T `append`
    calls leave it, in storage of `capacity` tokens per sequence (default T). `compressed`
    (k_cmp, v_cmp) passes phi's output when the caller already has it."""
    B, T, H, dk = k_slc.shape
    C = T if capacity is None else _check_capacity(capacity)
    if C < T:
        raise InvalidInputError(f"capacity must hold the prompt: capacity={C}, T={T}")
    cache = empty_cache(B, H, dk, v_slc.shape[3], C, config, k_slc.dtype, k_slc.device)
    if compressed is None:
        pk = None if phi_params is None else phi_params["k"]
        pv = None if phi_params is None else phi_params["v"]
        compressed = (compress(k_raw, config, phi, pk), compress(v_raw, config, phi, pv))
    N = n_cmp(T, config)
    cache.k_cmp[:, :N], cache.v_cmp[:, :N] = compressed
    cache.k_slc[:, :T], cache.v_slc[:, :T] = k_slc, v_slc
    l, w = config.cmp_len, config.window
    raw = torch.arange(max(0, T - l), T, device=k_slc.device)
    win = torch.arange(max(0, T - w), T, device=k_slc.device)
    cache.k_raw[:, raw % l], cache.v_raw[:, raw % l] = k_raw[:, raw], v_raw[:, raw]
    cache.k_win[:, win % w], cache.v_win[:, win % w] = k_win[:, win], v_win[:, win]
    cache.lengths.fill_(T)
    return cache


def prefill(
    q: Tensor, k_raw: Tensor, v_raw: Tensor, k_slc: Tensor, v_slc: Tensor, k_win: Tensor,
    v_win: Tensor, gates: Tensor, config: NSAConfig, phi: Any = "mean", phi_params: Any = None,
    capacity: int | None = None,
) -> tuple[NSAOutput, DecodeCache]:
    """Attend over a whole prompt (one length T for the batch) and return the cache decode
    continues from (`from_streams`), of `capacity` tokens per sequence (default T)."""
    out = nsa_forward(q, k_raw, v_raw, k_slc, v_slc, k_win, v_win, gates, config, phi, phi_params)
    return out, from_streams(k_raw, v_raw, k_slc, v_slc, k_win, v_win, config, phi, phi_params, capacity)


def join(caches: Sequence[DecodeCache], config: NSAConfig) -> DecodeCache:
    """One batch of every sequence of `caches`, in order, in storage of the largest capacity."""
    if not caches:
        raise InvalidInputError("join needs at least one cache: caches=[]")
    kinds = [(c.k_slc.shape[2], c.k_slc.shape[3], c.v_slc.shape[3], c.k_slc.dtype, c.k_slc.device)
             for c in caches]
    if len(set(kinds)) > 1:
        raise InvalidInputError(
            f"joined caches must have the same kv heads, head dims, dtype and device (H, dk, dv, dtype, "
            f"device): got {kinds}"
        )
    C = max(c.capacity for c in caches)
    parts = [c if c.capacity == C else resize(c, C, config) for c in caches]
    return DecodeCache(*(torch.cat([getattr(c, n) for c in parts]) for n in CACHE_ARRAYS),
                       lengths=torch.cat([c.lengths for c in parts]))


def select(cache: DecodeCache, batch_indices: Any, config: NSAConfig) -> DecodeCache:
    """The sequences at `batch_indices` (host ints), in that order: drop, keep, reorder or repeat."""
    B = validate_cache(cache, config)[0]
    idx = torch.as_tensor(batch_indices_of(batch_indices, B), device=cache.lengths.device)
    return DecodeCache(*(getattr(cache, n).index_select(0, idx) for n in CACHE_ARRAYS),
                       lengths=cache.lengths.index_select(0, idx))
