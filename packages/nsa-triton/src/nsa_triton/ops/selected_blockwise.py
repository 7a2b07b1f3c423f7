"""The selected branch's forward block by block: each key block is loaded once for all the
(token, head) rows that selected it, whatever the group size.

The token-wise kernel (`select.selected_attention`) runs one program per (token, kv head) with the
group's G heads as rows (padded to 16), so every selected block is read once per (token, kv head):
T * H * n blocks of K/V, and at G < 16 most rows are padding. Here the indices are inverted as for
the backward (`select.selecting_tokens`, `select.token_chunks`): one program per piece of a block's
list of selecting tokens keeps the block's keys/values resident and walks the list in tiles of
(tokens x G heads) rows, writing for every (token, slot, head) the block's own softmax partial
(o_s, lse_s) over its visible keys; a merge then forms o = sum_s exp(lse_s - lse) o_s with
lse = logsumexp_s lse_s, in slot order. Every partial has one writer and sums run in a fixed
order: deterministic. Tokens are processed in chunks so the partials (in the inputs' dtype) stay
within `PARTIAL_BYTES`; the chunk boundaries depend only on the shapes (no host synchronisation).

The backward's dq takes the same walk (`selected_dq_blockwise`): each (token, slot, head) row gets
scale * dS K of its block (float32 partials), summed over the slots in order into dq.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from nsa_spec.config import NSAConfig
from torch import Tensor

from nsa_triton.ops.attention_grad import grad_step, load_rows
from nsa_triton.ops.online import dot, interpreted
from nsa_triton.ops.select import token_chunks
from nsa_triton.ops.tiles import dot_precision, group_tile, padded

PARTIAL_BYTES = 1 << 30  # partial outputs of one token chunk, at most (the chunk has >= CHUNK_MIN tokens)
CHUNK_MIN = 1024
PIECE_TOKENS = 256  # tokens of one block's list per program
ROWS = 64  # (token, head) rows per tile
MAX_BLOCK = 64  # a block's keys/values stay resident: l' up to this many keys (the size measured)
MAX_ROW_BYTES = 512  # (padded dk + dv) * itemsize at most (bf16 dk = dv = 256: the dq kernel needs 257 KiB)

NUM_WARPS = 4


@triton.jit
def _piece_block(PIECES, K, V, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, sp_bh, T, H, DK, DV, L_SLC: tl.constexpr,
                 BL: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr):
    """This program's piece of a block's list: (b, h, list start, end, the block's k [BL, DKP] and
    v [BL, DVP], key positions [BL], which keys exist [BL])."""
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    row = PIECES + bh * sp_bh + tl.program_id(0).to(tl.int64) * 3
    blk = tl.load(row)
    start = tl.load(row + 1)
    end = tl.load(row + 2)
    ck = tl.arange(0, DKP)
    cv = tl.arange(0, DVP)
    in_blk = tl.arange(0, BL)
    pos = blk * L_SLC + in_blk  # [BL]
    key_ok = (in_blk < L_SLC) & (pos < T)
    busy = key_ok & (start < end)
    k = tl.load(K + b * sk_b + pos[:, None] * sk_t + h * sk_h + ck[None, :],
                mask=busy[:, None] & (ck[None, :] < DK), other=0.0)  # [BL, DKP]
    v = tl.load(V + b * sv_b + pos[:, None] * sv_t + h * sv_h + cv[None, :],
                mask=busy[:, None] & (cv[None, :] < DV), other=0.0)  # [BL, DVP]
    return b, h, bh, start, end, k, v, pos, key_ok


@triton.jit
def _slc_fwd_blocks(Q, K, V, TOK, SLOT, PIECES, PO, PL, sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t,
                    sv_h, st_bh, sp_bh, spo_b, spo_t, spo_s, spo_h, spl_b, spl_t, spl_s, spl_h, t0, T, H, G,
                    DK, DV, scale, L_SLC: tl.constexpr, BL: tl.constexpr, BT: tl.constexpr,
                    GP: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr,
                    INTERP: tl.constexpr):
    b, h, bh, start, end, k, v, pos, key_ok = _piece_block(PIECES, K, V, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h,
                                                           sp_bh, T, H, DK, DV, L_SLC, BL, DKP, DVP)
    TOK += bh * st_bh
    SLOT += bh * st_bh
    Q += b * sq_b
    PO += b * spo_b
    PL += b * spl_b
    if INTERP:
        i0 = start
        while i0 < end:
            _blocks_tile(i0, end, h, k, v, pos, key_ok, Q, TOK, SLOT, PO, PL, sq_t, sq_h, spo_t, spo_s,
                         spo_h, spl_t, spl_s, spl_h, t0, G, DK, DV, scale, BT, GP, DKP, DVP, PREC, INTERP)
            i0 += BT
    else:
        for i0 in range(start, end, BT):
            _blocks_tile(i0, end, h, k, v, pos, key_ok, Q, TOK, SLOT, PO, PL, sq_t, sq_h, spo_t, spo_s,
                         spo_h, spl_t, spl_s, spl_h, t0, G, DK, DV, scale, BT, GP, DKP, DVP, PREC, INTERP)


@triton.jit
def _blocks_tile(i0, end, h, k, v, pos, key_ok, Q, TOK, SLOT, PO, PL, sq_t, sq_h, spo_t, spo_s, spo_h,
                 spl_t, spl_s, spl_h, t0, G, DK, DV, scale, BT: tl.constexpr, GP: tl.constexpr,
                 DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr):
    """One block's softmax partial for BT list entries x GP heads (BT * GP rows)."""
    r = tl.arange(0, BT * GP)
    i = i0 + r // GP
    g = r % GP
    hq = h * G + g
    row_ok = (i < end) & (g < G)
    ck = tl.arange(0, DKP)
    cv = tl.arange(0, DVP)
    tc = tl.load(TOK + i, mask=i < end, other=0).to(tl.int64)  # [BT * GP] token within the chunk
    slot = tl.load(SLOT + i, mask=i < end, other=0).to(tl.int64)  # [BT * GP]
    t = t0 + tc
    q = tl.load(Q + t[:, None] * sq_t + hq[:, None] * sq_h + ck[None, :],
                mask=row_ok[:, None] & (ck[None, :] < DK), other=0.0)  # [BT * GP, DKP]
    s = dot(q, tl.trans(k), PREC, INTERP) * scale  # [BT * GP, BL]
    s = tl.where(row_ok[:, None] & key_ok[None, :] & (pos[None, :] <= t[:, None]), s, float("-inf"))
    m = tl.max(s, 1)
    m = tl.where(m == float("-inf"), 0.0, m)  # rows with no visible key (padding) stay finite
    p = tl.exp(s - m[:, None])  # [BT * GP, BL]
    den = tl.sum(p, 1)
    safe = tl.where(den > 0, den, 1.0)
    o = dot(p.to(v.dtype), v, PREC, INTERP) / safe[:, None]  # [BT * GP, DVP]
    tl.store(PO + tc[:, None] * spo_t + slot[:, None] * spo_s + hq[:, None] * spo_h + cv[None, :],
             o.to(PO.dtype.element_ty), mask=row_ok[:, None] & (cv[None, :] < DV))
    tl.store(PL + tc * spl_t + slot * spl_s + hq * spl_h, m + tl.log(safe), mask=row_ok)


@triton.jit
def _slc_merge(IDX, PO, PL, O, LSE, si_b, si_t, si_h, spo_b, spo_t, spo_s, spo_h, spl_b, spl_t, spl_s,
               spl_h, so_b, so_t, so_h, sl_b, sl_t, sl_h, t0, H, G, DV, N_SEL: tl.constexpr,
               NP: tl.constexpr, GP: tl.constexpr, DVP: tl.constexpr):
    tc = tl.program_id(0).to(tl.int64)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    t = t0 + tc
    g = tl.arange(0, GP)
    g_ok = g < G
    hq = h * G + g
    cv = tl.arange(0, DVP)
    s = tl.arange(0, NP)
    IDX += b * si_b + t * si_t + h * si_h
    PO += b * spo_b + tc * spo_t
    PL += b * spl_b + tc * spl_t
    blk = tl.load(IDX + s, mask=s < N_SEL, other=-1)  # [NP]
    used = g_ok[:, None] & (blk >= 0)[None, :]  # [GP, NP]
    lse_s = tl.load(PL + s[None, :] * spl_s + hq[:, None] * spl_h, mask=used, other=float("-inf"))
    m = tl.max(lse_s, 1)  # [GP]
    m = tl.where(m == float("-inf"), 0.0, m)
    total = tl.sum(tl.exp(lse_s - m[:, None]), 1)  # [GP]
    acc = tl.zeros([GP, DVP], tl.float32)  # [GP, DVP]
    for slot in tl.static_range(N_SEL):
        ok = g_ok & (tl.load(IDX + slot) >= 0)  # [GP]
        w = tl.exp(tl.load(PL + slot * spl_s + hq * spl_h, mask=ok, other=float("-inf")) - m)  # [GP]
        o_s = tl.load(PO + slot * spo_s + hq[:, None] * spo_h + cv[None, :],
                      mask=ok[:, None] & (cv[None, :] < DV), other=0.0)  # [GP, DVP]
        acc += w[:, None] * o_s.to(tl.float32)
    safe = tl.where(total > 0, total, 1.0)
    tl.store(O + b * so_b + t * so_t + hq[:, None] * so_h + cv[None, :], acc / safe[:, None],
             mask=g_ok[:, None] & (cv[None, :] < DV))
    tl.store(LSE + b * sl_b + t * sl_t + hq * sl_h, tl.where(total > 0, m + tl.log(safe), float("-inf")),
             mask=g_ok)


@triton.jit
def _slc_dq_blocks(Q, K, V, DO, GATE, LSE, DELTA, TOK, SLOT, PIECES, PQ, sq_b, sq_t, sq_h, sk_b, sk_t, sk_h,
                   sv_b, sv_t, sv_h, sd_b, sd_t, sd_h, sg_b, sg_t, sg_h, sl_b, sl_t, sl_h, se_b, se_t, se_h,
                   st_bh, sp_bh, spq_b, spq_t, spq_s, spq_h, t0, T, H, G, DK, DV, scale,
                   L_SLC: tl.constexpr, BL: tl.constexpr, BT: tl.constexpr, GP: tl.constexpr,
                   DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr):
    b, h, bh, start, end, k, v, pos, key_ok = _piece_block(PIECES, K, V, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h,
                                                           sp_bh, T, H, DK, DV, L_SLC, BL, DKP, DVP)
    TOK += bh * st_bh
    SLOT += bh * st_bh
    Q += b * sq_b
    DO += b * sd_b
    GATE += b * sg_b
    LSE += b * sl_b
    DELTA += b * se_b
    PQ += b * spq_b
    if INTERP:
        i0 = start
        while i0 < end:
            _dq_blocks_tile(i0, end, h, k, v, pos, key_ok, Q, DO, GATE, LSE, DELTA, TOK, SLOT, PQ, sq_t,
                            sq_h, sd_t, sd_h, sg_t, sg_h, sl_t, sl_h, se_t, se_h, spq_t, spq_s, spq_h, t0, G,
                            DK, DV, scale, BT, GP, DKP, DVP, PREC, INTERP)
            i0 += BT
    else:
        for i0 in range(start, end, BT):
            _dq_blocks_tile(i0, end, h, k, v, pos, key_ok, Q, DO, GATE, LSE, DELTA, TOK, SLOT, PQ, sq_t,
                            sq_h, sd_t, sd_h, sg_t, sg_h, sl_t, sl_h, se_t, se_h, spq_t, spq_s, spq_h, t0, G,
                            DK, DV, scale, BT, GP, DKP, DVP, PREC, INTERP)


@triton.jit
def _dq_blocks_tile(i0, end, h, k, v, pos, key_ok, Q, DO, GATE, LSE, DELTA, TOK, SLOT, PQ, sq_t, sq_h, sd_t,
                    sd_h, sg_t, sg_h, sl_t, sl_h, se_t, se_h, spq_t, spq_s, spq_h, t0, G, DK, DV, scale,
                    BT: tl.constexpr, GP: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
                    PREC: tl.constexpr, INTERP: tl.constexpr):
    """One block's dS K for BT list entries x GP heads (BT * GP rows), unscaled, float32."""
    r = tl.arange(0, BT * GP)
    i = i0 + r // GP
    g = r % GP
    hq = h * G + g
    row_ok = (i < end) & (g < G)
    ck = tl.arange(0, DKP)
    tc = tl.load(TOK + i, mask=i < end, other=0).to(tl.int64)  # [BT * GP] token within the chunk
    slot = tl.load(SLOT + i, mask=i < end, other=0).to(tl.int64)  # [BT * GP]
    t = t0 + tc
    q, do, gate, lse, delta = load_rows(Q, DO, GATE, LSE, DELTA, t, hq, row_ok, sq_t, sq_h, sd_t, sd_h, sg_t,
                                        sg_h, sl_t, sl_h, se_t, se_h, DK, DV, DKP, DVP)
    visible = row_ok[:, None] & key_ok[None, :] & (pos[None, :] <= t[:, None])
    _, ds = grad_step(q, k, v, do, gate, lse, delta, visible, scale, PREC, INTERP)  # [BT * GP, BL]
    dq = dot(ds.to(k.dtype), k, PREC, INTERP)  # [BT * GP, DKP]
    tl.store(PQ + tc[:, None] * spq_t + slot[:, None] * spq_s + hq[:, None] * spq_h + ck[None, :], dq,
             mask=row_ok[:, None] & (ck[None, :] < DK))


@triton.jit
def _slc_dq_merge(IDX, PQ, DQ, si_b, si_t, si_h, spq_b, spq_t, spq_s, spq_h, sdq_b, sdq_t, sdq_h, t0, H, G,
                  DK, scale, N_SEL: tl.constexpr, GP: tl.constexpr, DKP: tl.constexpr):
    tc = tl.program_id(0).to(tl.int64)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    t = t0 + tc
    g = tl.arange(0, GP)
    g_ok = g < G
    hq = h * G + g
    ck = tl.arange(0, DKP)
    IDX += b * si_b + t * si_t + h * si_h
    PQ += b * spq_b + tc * spq_t
    acc = tl.zeros([GP, DKP], tl.float32)  # [GP, DKP]
    for slot in tl.static_range(N_SEL):
        ok = g_ok & (tl.load(IDX + slot) >= 0)  # [GP]
        acc += tl.load(PQ + slot * spq_s + hq[:, None] * spq_h + ck[None, :],
                       mask=ok[:, None] & (ck[None, :] < DK), other=0.0)
    out = DQ + b * sdq_b + t * sdq_t + hq[:, None] * sdq_h + ck[None, :]
    out_ok = g_ok[:, None] & (ck[None, :] < DK)
    tl.store(out, tl.load(out, mask=out_ok, other=0.0) + scale * acc, mask=out_ok)


def chunk_tokens(T: int, n: int, heads_q: int, dv: int, itemsize: int) -> int:
    """Tokens per chunk: the partials [chunk, n, HQ, dv] fit PARTIAL_BYTES (at least CHUNK_MIN)."""
    per_token = n * heads_q * dv * itemsize
    return min(T, max(CHUNK_MIN, PARTIAL_BYTES // per_token))


def _chunk_lists(indices: Tensor, n_blocks: int) -> tuple[Tensor, Tensor, Tensor]:
    """The chunk's indices [B, Tc, H, n] inverted: (offsets [B, H, n_blocks + 1], tokens and slots
    [B, H, Tc * n] int32), tokens[offsets[j]:offsets[j + 1]] the chunk's tokens that selected block j
    (ascending) and slots their position in that token's index row."""
    B, Tc, H, n = indices.shape
    idx = indices.permute(0, 2, 1, 3).to(torch.int64)  # [B, H, Tc, n]
    entry = (torch.arange(Tc, device=indices.device)[:, None] * n
             + torch.arange(n, device=indices.device)[None, :])  # t * n + slot
    keys = torch.where(idx >= 0, idx * (Tc * n) + entry, n_blocks * Tc * n).reshape(B, H, Tc * n)
    keys = torch.sort(keys, dim=-1).values
    bounds = (torch.arange(n_blocks + 1, device=indices.device) * (Tc * n)).expand(B, H, -1).contiguous()
    within = keys % (Tc * n)
    return (torch.searchsorted(keys, bounds), (within // n).to(torch.int32).contiguous(),
            (within % n).to(torch.int32).contiguous())


def _chunks(indices: Tensor, n_blocks: int, chunk: int):
    """Per chunk of `chunk` tokens: (t0, tokens in the chunk, tokens and slots of every block's list,
    the pieces of at most PIECE_TOKENS entries: `select.token_chunks`)."""
    T, n = indices.shape[1], indices.shape[3]
    for t0 in range(0, T, chunk):
        tc = min(chunk, T - t0)
        offsets, tokens, slots = _chunk_lists(indices[:, t0:t0 + tc], n_blocks)
        yield t0, tc, tokens, slots, token_chunks(offsets, PIECE_TOKENS, tc * n)[0]


def supports(config: NSAConfig, dk: int, dv: int, itemsize: int) -> bool:
    """Whether a block's keys/values stay resident (l' <= MAX_BLOCK) and a row's q/dO fit the tiles'
    shared-memory plan ((padded dk + dv) * itemsize <= MAX_ROW_BYTES); otherwise the token-by-token
    kernels run."""
    return padded(config.slc_len) <= MAX_BLOCK and (padded(dk) + padded(dv)) * itemsize <= MAX_ROW_BYTES


def selected_attention_blockwise(q: Tensor, k_slc: Tensor, v_slc: Tensor, indices: Tensor, o: Tensor,
                                 lse: Tensor, config: NSAConfig, scale: float,
                                 chunk: int | None = None) -> None:
    """As `select.selected_attention`: the selected branch of q [B, T, HQ, dk] over the blocks
    `indices` [B, T, H, n] of k_slc/v_slc [B, T, H, d] into o [B, T, HQ, dv] (float32) and lse
    [B, T, HQ] (a float32 view), block by block; `chunk` tokens per pass (default `chunk_tokens`)."""
    B, T, HQ, dk = q.shape
    H, dv = k_slc.shape[2], v_slc.shape[3]
    G, n, l_slc = HQ // H, indices.shape[3], config.slc_len
    n_blocks = triton.cdiv(T, l_slc)
    indices = indices.contiguous()
    bt, gp = group_tile(G, ROWS)
    dkp, dvp, bl = padded(dk), padded(dv), padded(l_slc)
    prec, interp = dot_precision(q.dtype), interpreted()
    chunk = chunk or chunk_tokens(T, n, HQ, dv, q.element_size())
    for t0, tc, tokens, slots, pieces in _chunks(indices, n_blocks, chunk):
        po = torch.empty((B, tc, n, HQ, dv), dtype=q.dtype, device=q.device)
        pl = torch.empty((B, tc, n, HQ), dtype=torch.float32, device=q.device)
        _slc_fwd_blocks[(pieces.shape[2], B * H)](
            q, k_slc, v_slc, tokens, slots, pieces, po, pl, q.stride(0), q.stride(1), q.stride(2),
            k_slc.stride(0), k_slc.stride(1), k_slc.stride(2), v_slc.stride(0), v_slc.stride(1),
            v_slc.stride(2), tokens.stride(1), pieces.stride(1), po.stride(0), po.stride(1), po.stride(2),
            po.stride(3), pl.stride(0), pl.stride(1), pl.stride(2), pl.stride(3), t0, T, H, G, dk, dv, scale,
            L_SLC=l_slc, BL=bl, BT=bt, GP=gp, DKP=dkp, DVP=dvp, PREC=prec, INTERP=interp,
            num_warps=NUM_WARPS,
        )
        _slc_merge[(tc, B * H)](
            indices, po, pl, o, lse, indices.stride(0), indices.stride(1), indices.stride(2), po.stride(0),
            po.stride(1), po.stride(2), po.stride(3), pl.stride(0), pl.stride(1), pl.stride(2), pl.stride(3),
            o.stride(0), o.stride(1), o.stride(2), lse.stride(0), lse.stride(1), lse.stride(2), t0, H, G, dv,
            N_SEL=n, NP=triton.next_power_of_2(n), GP=padded(G), DVP=dvp, num_warps=NUM_WARPS,
        )


def selected_dq_blockwise(q: Tensor, k_slc: Tensor, v_slc: Tensor, indices: Tensor, grad_o: Tensor,
                          gate: Tensor, lse: Tensor, delta: Tensor, dq: Tensor, config: NSAConfig,
                          scale: float, chunk: int | None = None) -> None:
    """The selected branch's share of dq [B, T, HQ, dk] (float32, added in place), block by block;
    arguments as `select.selected_attention_backward` takes them (a `select.DqStage`)."""
    B, T, HQ, dk = q.shape
    H, dv = k_slc.shape[2], v_slc.shape[3]
    G, n, l_slc = HQ // H, indices.shape[3], config.slc_len
    indices = indices.contiguous()
    bt, gp = group_tile(G, ROWS)
    dkp, dvp, bl = padded(dk), padded(dv), padded(l_slc)
    prec, interp = dot_precision(q.dtype), interpreted()
    chunk = chunk or chunk_tokens(T, n, HQ, dk, 4)
    for t0, tc, tokens, slots, pieces in _chunks(indices, triton.cdiv(T, l_slc), chunk):
        pq = torch.empty((B, tc, n, HQ, dk), dtype=torch.float32, device=q.device)
        _slc_dq_blocks[(pieces.shape[2], B * H)](
            q, k_slc, v_slc, grad_o, gate, lse, delta, tokens, slots, pieces, pq, q.stride(0), q.stride(1),
            q.stride(2), k_slc.stride(0), k_slc.stride(1), k_slc.stride(2), v_slc.stride(0), v_slc.stride(1),
            v_slc.stride(2), grad_o.stride(0), grad_o.stride(1), grad_o.stride(2), gate.stride(0),
            gate.stride(1), gate.stride(2), lse.stride(0), lse.stride(1), lse.stride(2), delta.stride(0),
            delta.stride(1), delta.stride(2), tokens.stride(1), pieces.stride(1), pq.stride(0), pq.stride(1),
            pq.stride(2), pq.stride(3), t0, T, H, G, dk, dv, scale, L_SLC=l_slc, BL=bl, BT=bt, GP=gp,
            DKP=dkp, DVP=dvp, PREC=prec, INTERP=interp, num_warps=NUM_WARPS,
        )
        _slc_dq_merge[(tc, B * H)](
            indices, pq, dq, indices.stride(0), indices.stride(1), indices.stride(2), pq.stride(0),
            pq.stride(1), pq.stride(2), pq.stride(3), dq.stride(0), dq.stride(1), dq.stride(2), t0, H, G, dk,
            scale, N_SEL=n, GP=padded(G), DKP=dkp, num_warps=NUM_WARPS,
        )
