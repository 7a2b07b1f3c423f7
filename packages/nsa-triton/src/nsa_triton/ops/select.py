"""The selected branch (Eq. 12), the NSA way, its backward, and top-n selection.

Forward: one program per (token, kv head) loads the G query heads of the group (padded to >= 16
rows for the matrix units) once and walks that token's n selected blocks (indices [B, T, H, n],
-1 padded), keys clamped to positions <= t, with an online softmax in float32.

Backward (deterministic, no atomics), with dO_c = gate * dO, P = exp(scale q.k - lse) and
dS = P (dO_c V^T - delta):
- dq: one program per (token, kv head), the G heads as rows, walks the token's n blocks in key
  tiles and adds scale * dS K to dq (float32, read-modify-write);
- dk, dv: the indices are inverted on the GPU (`selecting_tokens`) into, per (batch, kv head,
  key block j), the ascending list of tokens that selected j. A program loads a tile of block
  j's keys/values once and walks a chunk of that list in tiles of (tokens x G heads) rows,
  accumulating dK = scale * dS^T Q and dV = P^T dO_c in registers. Lists longer than one chunk
  (block 0 is selected by every token) are split (`token_chunks`): the first chunk of a block
  writes dk/dv, the others write float32 partials that a last kernel adds in chunk order.

Top-n (Eq. 11): blocks 0, c-1 and c are forced, then the highest scores among blocks 0..c, ties
broken towards the lower index (the order of `nsa_torch.ops.select.top_n`'s stable sort); the
picks are written ascending, -1 padded. Two forms share the ranking key (`top_n_key`): `top_n`,
one program per (token, kv head) holding that row of a score matrix, n argmax picks (the decode
step's, and the forward's for G >= 2); and `top_n_insert` / `top_n_store`, a running top-n that
`compress.running_top_n` feeds chunk by chunk as it computes the scores (the forward's for G = 1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl
from nsa_spec.config import NSAConfig
from nsa_spec.errors import UnsupportedError
from torch import Tensor

from nsa_triton.ops.attention_grad import grad_step
from nsa_triton.ops.online import dot, finish, interpreted, online_step
from nsa_triton.ops.tiles import dot_precision, first_fit, group_tile, padded, staged_plans

TOP_N_MAX_BLOCKS = 16384  # one program holds a token's whole score row: T <= 16384 * l'
FWD_KEYS = 64  # keys per step of the forward: a longer block is folded in tiles of this many
TOP_N_WARPS = ((2048, 1), (4096, 4), (TOP_N_MAX_BLOCKS, 8))
"""(padded blocks per row at most, warps) of `top_n` (H200, paper shape: 1 warp 3.4 / 14.0 ms against
4 warps 4.2 / 14.9 ms at 1024 / 2048 blocks)."""

BWD_SMEM_BUDGET = 160 * 1024  # bytes of staged tiles per program (H200: 228 KiB per SM)
BWD_STAGES = 2  # pipeline depth of the streamed tiles when it fits the budget
BWD_KEYS = 64  # keys per tile (dq kernel) and per program (dk/dv kernel), at most
BWD_WIDE_KEYS = 32  # keys per dk/dv program when dk + dv > BWD_WIDE_DIMS (register accumulators)
BWD_WIDE_DIMS = 256
BWD_ROWS = 128  # (token, head) rows per dk/dv tile, at most
BWD_CHUNK_TOKENS = 4096  # tokens of one block's list per dk/dv program
BWD_WARPS = 4  # dq and reduce kernels
BWD_DKDV_WARPS = 8  # H200, bf16, dk = dv = 128, T = 32k: 128 rows and 8 warps 10.1 -> 8.2 ms against 64 and 4


@triton.jit
def _slc_fwd(Q, K, V, IDX, O, LSE, sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h,
             si_b, si_t, si_h, so_b, so_t, so_h, sl_b, sl_t, sl_h, H, G, DK, DV, scale, N_SEL: tl.constexpr,
             L_SLC: tl.constexpr, BL: tl.constexpr, SUB: tl.constexpr, KB: tl.constexpr, GP: tl.constexpr,
             DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr):
    tl.static_assert((SUB == 1) | (KB == 1), "a block split in sub-tiles is folded one block per step")
    t = tl.program_id(0).to(tl.int64)
    b = (tl.program_id(1) // H).to(tl.int64)
    h = tl.program_id(1) % H
    g = tl.arange(0, GP)
    g_ok = g < G
    hq = h * G + g
    ck = tl.arange(0, DKP)
    cv = tl.arange(0, DVP)
    q = tl.load(Q + b * sq_b + t * sq_t + hq[:, None] * sq_h + ck[None, :],
                mask=g_ok[:, None] & (ck[None, :] < DK), other=0.0)
    m = tl.full([GP], float("-inf"), tl.float32)
    den = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, DVP], tl.float32)
    which = tl.arange(0, KB * BL) // BL
    offs = tl.arange(0, KB * BL) % BL
    K += b * sk_b + h * sk_h
    V += b * sv_b + h * sv_h
    IDX += b * si_b + t * si_t + h * si_h
    for step in range(0, N_SEL * SUB, KB):  # one loop, so that its loads pipeline
        slot = step // SUB  # a block longer than BL keys takes SUB steps
        blk = tl.load(IDX + slot + which, mask=slot + which < N_SEL, other=-1)
        key = (step % SUB) * BL + offs  # [KB * BL] key offsets within the block
        pos = blk.to(tl.int64) * L_SLC + key
        ok = (blk >= 0) & (key < L_SLC) & (pos <= t)
        k = tl.load(K + pos[:, None] * sk_t + ck[None, :], mask=ok[:, None] & (ck[None, :] < DK),
                    other=0.0)  # [KB * BL, DKP]
        v = tl.load(V + pos[:, None] * sv_t + cv[None, :], mask=ok[:, None] & (cv[None, :] < DV),
                    other=0.0)  # [KB * BL, DVP]
        m, den, acc = online_step(q, k, v, ok[None, :], m, den, acc, scale, PREC, INTERP)
    o, lse = finish(m, den, acc)
    tl.store(O + b * so_b + t * so_t + hq[:, None] * so_h + cv[None, :], o,
             mask=g_ok[:, None] & (cv[None, :] < DV))
    tl.store(LSE + b * sl_b + t * sl_t + hq * sl_h, lse, mask=g_ok)


@triton.jit
def top_n_key(score, j, c):
    """Eq. 11's ranking key of blocks j for a query whose current block is c (broadcast together):
    +inf for the forced blocks 0, c - 1 and c, the score for the other blocks j <= c, -inf for the
    blocks that do not exist yet."""
    exists = j <= c
    forced = exists & ((j == 0) | (j == c) | (j == c - 1))
    return tl.where(forced, float("inf"), tl.where(exists, score, float("-inf")))


@triton.jit
def top_n_pick(score, j, c, N_SEL: tl.constexpr):
    """Eq. 11 for one query: score [NBP] of blocks j (only blocks j <= c, the current block,
    exist) -> taken [NBP] int32, 1 for the min(c + 1, N_SEL) selected blocks."""
    key = top_n_key(score, j, c)  # [NBP]
    picks = tl.minimum(c + 1, N_SEL)
    taken = tl.zeros_like(j)  # [NBP] int32
    for k in tl.static_range(N_SEL):
        best = tl.argmax(key, 0, tie_break_left=True)
        take = (j == best) & (k < picks)
        taken = tl.where(take, 1, taken)
        key = tl.where(take, float("-inf"), key)
    return taken


@triton.jit
def top_n_insert(best, best_j, key, j0, N_SEL: tl.constexpr, NP: tl.constexpr, BJP: tl.constexpr,
                 ROUNDS: tl.constexpr):
    """The running top n of R queries: best, best_j [R, NP] are the keys and blocks kept so far
    (slots >= N_SEL hold +inf placeholders, never replaced), key [R, BJP] the keys of the next
    chunk of blocks j0 .. j0 + BJP - 1, all above the kept ones -> best, best_j with the chunk in.

    A chunk block enters by replacing the weakest kept block (lowest key, then highest index) when
    its key is strictly larger: on a tie the kept block, whose index is lower, stays. Each round
    tries every row's strongest remaining chunk block (equal keys: the lower index first), so a
    chunk needs at most ROUNDS = min(chunk size, N_SEL) rounds (a block that entered is never
    displaced by a weaker one of its own chunk); a round no row takes anything in is skipped, which
    late chunks mostly are. Unrolled rounds, not a `while`: Triton 3.6 does not pipeline the loads
    of a loop that contains another loop (offline sm_90 compile: no async copies with a `while`)."""
    slot = tl.arange(0, NP)
    col = tl.arange(0, BJP)
    for _ in tl.static_range(ROUNDS):
        top = tl.max(key, 1)  # [R]
        weakest = tl.min(best, 1)  # [R]
        if tl.max((top > weakest).to(tl.int32), 0) > 0:
            enter = top > weakest  # [R]
            pick = tl.argmax(key, 1, tie_break_left=True)  # [R]: the strongest chunk column
            out = tl.argmax(tl.where(best == weakest[:, None], best_j, -2), 1, tie_break_left=True)  # [R]
            hit = enter[:, None] & (slot[None, :] == out[:, None])  # [R, NP]
            best = tl.where(hit, top[:, None], best)
            best_j = tl.where(hit, j0 + pick[:, None], best_j)
            key = tl.where(col[None, :] == pick[:, None], float("-inf"), key)
    return best, best_j


@triton.jit
def top_n_store(best, best_j, ROW, row_ok, N_SEL: tl.constexpr, NP: tl.constexpr):
    """Write the picks of R queries (`top_n_insert`'s first N_SEL slots whose key > -inf: blocks
    that exist) ascending to ROW[r] + 0 .. N_SEL - 1 (ROW [R] pointers), -1 padded."""
    slot = tl.arange(0, NP)
    valid = (best > float("-inf")) & (slot[None, :] < N_SEL)  # [R, NP]
    before = valid[:, None, :] & (best_j[:, None, :] < best_j[:, :, None])  # [R, NP, NP]
    rank = tl.sum(before.to(tl.int32), 2)  # [R, NP]: the slot's place in ascending block order
    tl.store(ROW[:, None] + rank, best_j, mask=valid & row_ok[:, None])
    count = tl.sum(valid.to(tl.int32), 1)  # [R]
    pad = row_ok[:, None] & (slot[None, :] >= count[:, None]) & (slot[None, :] < N_SEL)
    tl.store(ROW[:, None] + slot[None, :], tl.zeros_like(best_j) - 1, mask=pad)


@triton.jit
def top_n_row(score, j, c, IDX, N_SEL: tl.constexpr, NP: tl.constexpr):
    """`top_n_pick`, the picks written ascending to IDX[0:N_SEL], -1 padded."""
    taken = top_n_pick(score, j, c, N_SEL)
    rank = tl.cumsum(taken, 0) - 1  # [NBP]
    tl.store(IDX + rank, j, mask=taken > 0)
    slot = tl.arange(0, NP)
    picks = tl.minimum(c + 1, N_SEL)
    tl.store(IDX + slot, tl.full([NP], -1, tl.int32), mask=(slot >= picks) & (slot < N_SEL))


@triton.jit
def _top_n(S, IDX, ss_b, ss_t, ss_h, si_b, si_t, si_h, T0, H, NB, L_SLC: tl.constexpr,
           N_SEL: tl.constexpr, NBP: tl.constexpr, NP: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)  # row r of S and IDX is token T0 + r
    t = T0 + r
    b = (tl.program_id(1) // H).to(tl.int64)
    h = tl.program_id(1) % H
    j = tl.arange(0, NBP)
    c = t // L_SLC
    score = tl.load(S + b * ss_b + r * ss_t + h * ss_h + j, mask=(j <= c) & (j < NB),
                    other=float("-inf"))  # [NBP]
    top_n_row(score, j, c, IDX + b * si_b + r * si_t + h * si_h, N_SEL, NP)


def top_n(scores: Tensor, config: NSAConfig, num_warps: int | None = None, first: int = 0,
          out: Tensor | None = None) -> Tensor:
    """Eq. 11 on the scores [B, R, H, n_blocks] of tokens first .. first + R - 1 -> their indices
    [B, R, H, n] (int32, ascending, -1 padded), written to out[:, first:first + R] when `out`
    ([B, T, H, n]) is given, which is returned.

    Raises `UnsupportedError` beyond TOP_N_MAX_BLOCKS blocks (one program holds a whole row)."""
    B, R, H, nb = scores.shape
    if nb > TOP_N_MAX_BLOCKS:
        raise UnsupportedError(
            f"top-n holds one token's block scores in one program: n_blocks={nb} (T={first + R}, "
            f"slc_len={config.slc_len}) exceeds the supported {TOP_N_MAX_BLOCKS}"
        )
    n = config.top_n
    nbp = triton.next_power_of_2(nb)
    if num_warps is None:
        num_warps = next(w for most, w in TOP_N_WARPS if nbp <= most)
    rows = torch.empty((B, R, H, n), dtype=torch.int32, device=scores.device) if out is None \
        else out[:, first:first + R]
    _top_n[(R, B * H)](
        scores, rows, scores.stride(0), scores.stride(1), scores.stride(2), rows.stride(0),
        rows.stride(1), rows.stride(2), first, H, nb, L_SLC=config.slc_len, N_SEL=n, NBP=nbp,
        NP=triton.next_power_of_2(n), num_warps=num_warps,
    )
    return rows if out is None else out


def selected_attention(q: Tensor, k_slc: Tensor, v_slc: Tensor, indices: Tensor, o: Tensor,
                       lse: Tensor, config: NSAConfig, scale: float, blocks_per_step: int = 1,
                       num_warps: int = 4, num_stages: int = 2) -> None:
    """Write the selected branch of q [B, T, HQ, dk] over the blocks `indices` [B, T, H, n] of
    k_slc/v_slc [B, T, H, d] into o [B, T, HQ, dv] (float32) and lse [B, T, HQ] (a float32 view).

    Each loop step folds `blocks_per_step` selected blocks (a power of two) into the softmax; with
    one block per step, a block is folded in tiles of at most FWD_KEYS keys (fewer, or fewer stages,
    where the GPU's shared memory is short: `tiles.first_fit`)."""
    B, T, HQ, dk = q.shape
    H, dv = k_slc.shape[2], v_slc.shape[3]
    indices = indices.contiguous()
    if blocks_per_step > 1:
        plans = [(padded(config.slc_len), num_stages)]
    else:
        plans = staged_plans(min(padded(config.slc_len), FWD_KEYS), num_stages)

    def launch(plan: tuple[int, int]) -> tuple[tuple, dict]:
        bl, stages = plan
        args = (q, k_slc, v_slc, indices, o, lse, *q.stride()[:3], *k_slc.stride()[:3], *v_slc.stride()[:3],
                *indices.stride()[:3], *o.stride()[:3], *lse.stride()[:3], H, HQ // H, dk, dv, scale)
        return args, dict(N_SEL=indices.shape[3], L_SLC=config.slc_len, BL=bl,
                          SUB=triton.cdiv(config.slc_len, bl), KB=blocks_per_step, GP=padded(HQ // H),
                          DKP=padded(dk), DVP=padded(dv), PREC=dot_precision(q.dtype), INTERP=interpreted(),
                          num_warps=num_warps, num_stages=stages)

    args, kwargs = launch(first_fit(_slc_fwd, plans, launch, q.device))
    _slc_fwd[(T, B * H)](*args, **kwargs)


@triton.jit
def _slc_bwd_dq(Q, K, V, IDX, DO, GATE, LSE, DELTA, DQ, sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h,
                si_b, si_t, si_h, sd_b, sd_t, sd_h, sg_b, sg_t, sg_h, sl_b, sl_t, sl_h, se_b, se_t, se_h,
                sdq_b, sdq_t, sdq_h, H, G, DK, DV, scale, N_SEL: tl.constexpr, L_SLC: tl.constexpr,
                BK: tl.constexpr, NSUB: tl.constexpr, GP: tl.constexpr, DKP: tl.constexpr,
                DVP: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    b = (tl.program_id(1) // H).to(tl.int64)
    h = tl.program_id(1) % H
    g = tl.arange(0, GP)
    g_ok = g < G
    hq = h * G + g
    ck = tl.arange(0, DKP)
    cv = tl.arange(0, DVP)
    kk = tl.arange(0, BK)
    q = tl.load(Q + b * sq_b + t * sq_t + hq[:, None] * sq_h + ck[None, :],
                mask=g_ok[:, None] & (ck[None, :] < DK), other=0.0)  # [GP, DKP]
    gate = tl.load(GATE + b * sg_b + t * sg_t + hq * sg_h, mask=g_ok, other=0.0).to(tl.float32)  # [GP]
    do = tl.load(DO + b * sd_b + t * sd_t + hq[:, None] * sd_h + cv[None, :],
                 mask=g_ok[:, None] & (cv[None, :] < DV), other=0.0).to(tl.float32)  # [GP, DVP]
    do = (do * gate[:, None]).to(Q.dtype.element_ty)
    lse = tl.load(LSE + b * sl_b + t * sl_t + hq * sl_h, mask=g_ok, other=0.0)  # [GP]
    delta = tl.load(DELTA + b * se_b + t * se_t + hq * se_h, mask=g_ok, other=0.0)  # [GP]
    dq = tl.zeros([GP, DKP], tl.float32)  # [GP, DKP]
    K += b * sk_b + h * sk_h
    V += b * sv_b + h * sv_h
    IDX += b * si_b + t * si_t + h * si_h
    for step in range(N_SEL * NSUB):
        blk = tl.load(IDX + step // NSUB).to(tl.int64)
        in_blk = (step % NSUB) * BK + kk
        pos = blk * L_SLC + in_blk  # [BK]
        ok = (blk >= 0) & (in_blk < L_SLC) & (pos <= t)
        k = tl.load(K + pos[:, None] * sk_t + ck[None, :], mask=ok[:, None] & (ck[None, :] < DK),
                    other=0.0)  # [BK, DKP]
        v = tl.load(V + pos[:, None] * sv_t + cv[None, :], mask=ok[:, None] & (cv[None, :] < DV),
                    other=0.0)  # [BK, DVP]
        s = dot(q, tl.trans(k), PREC, INTERP) * scale  # [GP, BK]
        p = tl.where(g_ok[:, None] & ok[None, :], tl.exp(s - lse[:, None]), 0.0)  # [GP, BK]
        dp = dot(do, tl.trans(v), PREC, INTERP)  # [GP, BK]
        ds = p * (dp - delta[:, None])
        dq += dot(ds.to(k.dtype), k, PREC, INTERP)
    out = DQ + b * sdq_b + t * sdq_t + hq[:, None] * sdq_h + ck[None, :]
    out_ok = g_ok[:, None] & (ck[None, :] < DK)
    tl.store(out, tl.load(out, mask=out_ok, other=0.0) + scale * dq, mask=out_ok)


@triton.jit
def _dkdv_tile(i0, end, k, v, pos, key_ok, dk, dv, Q, DO, GATE, LSE, DELTA, TOK, b, h, sq_b, sq_t, sq_h,
               sd_b, sd_t, sd_h, sg_b, sg_t, sg_h, sl_b, sl_t, sl_h, se_b, se_t, se_h, G, DK, DV, scale,
               BT: tl.constexpr, GP: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
               PREC: tl.constexpr, INTERP: tl.constexpr):
    """Fold BT tokens of a block's list (x GP heads: BT * GP rows) into dk [BK, DKP], dv [BK, DVP]."""
    r = tl.arange(0, BT * GP)
    i = i0 + r // GP
    g = r % GP
    hq = h * G + g
    row_ok = (i < end) & (g < G)
    ck = tl.arange(0, DKP)
    cv = tl.arange(0, DVP)
    t = tl.load(TOK + i, mask=i < end, other=0).to(tl.int64)  # [BT * GP]
    q = tl.load(Q + b * sq_b + t[:, None] * sq_t + hq[:, None] * sq_h + ck[None, :],
                mask=row_ok[:, None] & (ck[None, :] < DK), other=0.0)  # [BT * GP, DKP]
    gate = tl.load(GATE + b * sg_b + t * sg_t + hq * sg_h, mask=row_ok, other=0.0).to(tl.float32)
    do = tl.load(DO + b * sd_b + t[:, None] * sd_t + hq[:, None] * sd_h + cv[None, :],
                 mask=row_ok[:, None] & (cv[None, :] < DV), other=0.0)  # [BT * GP, DVP]
    lse = tl.load(LSE + b * sl_b + t * sl_t + hq * sl_h, mask=row_ok, other=0.0)  # [BT * GP]
    delta = tl.load(DELTA + b * se_b + t * se_t + hq * se_h, mask=row_ok, other=0.0)  # [BT * GP]
    valid = row_ok[:, None] & key_ok[None, :] & (pos[None, :] <= t[:, None])
    pg, ds = grad_step(q, k, v, do, gate, lse, delta, valid, scale, PREC, INTERP)  # [BT * GP, BK] x2
    dv += dot(tl.trans(pg.to(do.dtype)), do, PREC, INTERP)
    dk += dot(tl.trans(ds.to(q.dtype)), q, PREC, INTERP)
    return dk, dv


@triton.jit
def _slc_bwd_dkdv(Q, K, V, DO, GATE, LSE, DELTA, TOK, PIECES, DK_OUT, DV_OUT, PK, PV, sq_b, sq_t, sq_h,
                  sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, sd_b, sd_t, sd_h, sg_b, sg_t, sg_h, sl_b, sl_t, sl_h,
                  se_b, se_t, se_h, st_bh, sp_bh, sdk_b, sdk_t, sdk_h, sdv_b, sdv_t, sdv_h, spk_bh, spk_c,
                  spv_bh, spv_c, T, H, G, NB, N_PIECES, DK, DV, scale, L_SLC: tl.constexpr, BK: tl.constexpr,
                  NSUB: tl.constexpr, BT: tl.constexpr, GP: tl.constexpr, DKP: tl.constexpr,
                  DVP: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr):
    piece = (tl.program_id(0) // NSUB + NB) % N_PIECES  # further pieces first: long lists start early
    sub = tl.program_id(0) % NSUB
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    row = PIECES + bh * sp_bh + piece.to(tl.int64) * 3
    blk = tl.load(row)
    start = tl.load(row + 1)
    end = tl.load(row + 2)
    ck = tl.arange(0, DKP)
    cv = tl.arange(0, DVP)
    in_blk = sub * BK + tl.arange(0, BK)
    pos = blk * L_SLC + in_blk  # [BK]
    key_ok = (in_blk < L_SLC) & (pos < T)
    busy = key_ok & (start < end)
    k = tl.load(K + b * sk_b + pos[:, None] * sk_t + h * sk_h + ck[None, :],
                mask=busy[:, None] & (ck[None, :] < DK), other=0.0)  # [BK, DKP]
    v = tl.load(V + b * sv_b + pos[:, None] * sv_t + h * sv_h + cv[None, :],
                mask=busy[:, None] & (cv[None, :] < DV), other=0.0)  # [BK, DVP]
    dk = tl.zeros([BK, DKP], tl.float32)  # [BK, DKP]
    dv = tl.zeros([BK, DVP], tl.float32)  # [BK, DVP]
    TOK += bh * st_bh
    if INTERP:
        i0 = start
        while i0 < end:
            dk, dv = _dkdv_tile(i0, end, k, v, pos, key_ok, dk, dv, Q, DO, GATE, LSE, DELTA, TOK, b, h,
                                sq_b, sq_t, sq_h, sd_b, sd_t, sd_h, sg_b, sg_t, sg_h, sl_b, sl_t, sl_h,
                                se_b, se_t, se_h, G, DK, DV, scale, BT, GP, DKP, DVP, PREC, INTERP)
            i0 += BT
    else:
        for i0 in range(start, end, BT):
            dk, dv = _dkdv_tile(i0, end, k, v, pos, key_ok, dk, dv, Q, DO, GATE, LSE, DELTA, TOK, b, h,
                                sq_b, sq_t, sq_h, sd_b, sd_t, sd_h, sg_b, sg_t, sg_h, sl_b, sl_t, sl_h,
                                se_b, se_t, se_h, G, DK, DV, scale, BT, GP, DKP, DVP, PREC, INTERP)
    dk *= scale
    first = piece < NB
    k_ok = key_ok[:, None] & (ck[None, :] < DK)
    v_ok = key_ok[:, None] & (cv[None, :] < DV)
    tl.store(DK_OUT + b * sdk_b + pos[:, None] * sdk_t + h * sdk_h + ck[None, :], dk, mask=first & k_ok)
    tl.store(DV_OUT + b * sdv_b + pos[:, None] * sdv_t + h * sdv_h + cv[None, :], dv, mask=first & v_ok)
    more = (piece - NB).to(tl.int64)
    tl.store(PK + bh * spk_bh + more * spk_c + in_blk[:, None] * DK + ck[None, :], dk,
             mask=(piece >= NB) & (start < end) & k_ok)
    tl.store(PV + bh * spv_bh + more * spv_c + in_blk[:, None] * DV + cv[None, :], dv,
             mask=(piece >= NB) & (start < end) & v_ok)


@triton.jit
def _slc_bwd_reduce(DK_OUT, DV_OUT, PK, PV, EXTRA, se_bh, sdk_b, sdk_t, sdk_h, sdv_b, sdv_t, sdv_h, spk_bh,
                    spk_c, spv_bh, spv_c, T, H, DK, DV, L_SLC: tl.constexpr, BK: tl.constexpr,
                    NSUB: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr, INTERP: tl.constexpr):
    blk = (tl.program_id(0) // NSUB).to(tl.int64)
    sub = tl.program_id(0) % NSUB
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    lo = tl.load(EXTRA + bh * se_bh + blk * 2)
    hi = tl.load(EXTRA + bh * se_bh + blk * 2 + 1)
    ck = tl.arange(0, DKP)
    cv = tl.arange(0, DVP)
    in_blk = sub * BK + tl.arange(0, BK)
    pos = blk * L_SLC + in_blk  # [BK]
    key_ok = (in_blk < L_SLC) & (pos < T)
    k_ok = key_ok[:, None] & (ck[None, :] < DK)
    v_ok = key_ok[:, None] & (cv[None, :] < DV)
    pk = PK + bh * spk_bh + in_blk[:, None] * DK + ck[None, :]  # [BK, DKP]
    pv = PV + bh * spv_bh + in_blk[:, None] * DV + cv[None, :]  # [BK, DVP]
    dk = tl.zeros([BK, DKP], tl.float32)  # [BK, DKP]
    dv = tl.zeros([BK, DVP], tl.float32)  # [BK, DVP]
    if INTERP:
        e = lo
        while e < hi:
            dk += tl.load(pk + e * spk_c, mask=k_ok, other=0.0)
            dv += tl.load(pv + e * spv_c, mask=v_ok, other=0.0)
            e += 1
    else:
        for e in range(lo, hi):
            dk += tl.load(pk + e * spk_c, mask=k_ok, other=0.0)
            dv += tl.load(pv + e * spv_c, mask=v_ok, other=0.0)
    out_k = DK_OUT + b * sdk_b + pos[:, None] * sdk_t + h * sdk_h + ck[None, :]
    out_v = DV_OUT + b * sdv_b + pos[:, None] * sdv_t + h * sdv_h + cv[None, :]
    tl.store(out_k, tl.load(out_k, mask=k_ok & (lo < hi), other=0.0) + dk, mask=k_ok & (lo < hi))
    tl.store(out_v, tl.load(out_v, mask=v_ok & (lo < hi), other=0.0) + dv, mask=v_ok & (lo < hi))


def selecting_tokens(indices: Tensor, n_blocks: int) -> tuple[Tensor, Tensor]:
    """The indices [B, T, H, n] (-1 padded) inverted: (offsets [B, H, n_blocks + 1] int64, tokens
    [B, H, T * n] int32), tokens[b, h, offsets[b, h, j]:offsets[b, h, j + 1]] being the tokens
    that selected block j, ascending.

    Entries sort by the key j * T + t (unique per (b, h); -1 entries map past the end), so the
    result is deterministic, and the shapes are fixed by the input: no host synchronisation."""
    B, T, H, n = indices.shape
    idx = indices.permute(0, 2, 1, 3).to(torch.int64)  # [B, H, T, n]
    t = torch.arange(T, device=indices.device)[:, None]
    keys = torch.where(idx >= 0, idx * T + t, n_blocks * T).reshape(B, H, T * n)
    keys = torch.sort(keys, dim=-1).values
    bounds = (torch.arange(n_blocks + 1, device=indices.device) * T).expand(B, H, -1).contiguous()
    return torch.searchsorted(keys, bounds), (keys % T).to(torch.int32)


def token_chunks(offsets: Tensor, chunk: int, n_entries: int) -> tuple[Tensor, Tensor]:
    """Cut each block's token list (`selecting_tokens`' offsets [B, H, n_blocks + 1], lists of
    `n_entries` slots per (b, h)) into pieces of at most `chunk` tokens.

    Returns (pieces [B, H, n_blocks + n_entries // chunk, 3] int64 rows (block, start, end), row j
    < n_blocks being block j's first piece (maybe empty) and the rows after it the further pieces
    packed block by block, then empty ones; extra [B, H, n_blocks, 2]: the range of further-piece
    numbers (row - n_blocks) of block j). The bound on further pieces is fixed by the shapes:
    sum_j floor((count_j - 1) / chunk) <= n_entries // chunk."""
    B, H, _ = offsets.shape
    start, stop = offsets[..., :-1], offsets[..., 1:]
    n_blocks = start.shape[-1]
    extra = (stop - start - 1).clamp(min=0) // chunk  # [B, H, n_blocks]
    ex_stop = torch.cumsum(extra, -1)
    ex_start = ex_stop - extra
    blocks = torch.arange(n_blocks, device=offsets.device).expand(B, H, -1)
    first = torch.stack([blocks, start, torch.minimum(start + chunk, stop)], -1)
    n_more = n_entries // chunk
    e = torch.arange(n_more, device=offsets.device).expand(B, H, -1).contiguous()
    blk = torch.searchsorted(ex_stop, e, right=True)  # [B, H, n_more], n_blocks past the last piece
    safe = blk.clamp(max=n_blocks - 1)
    lo = torch.gather(start, -1, safe) + (e - torch.gather(ex_start, -1, safe) + 1) * chunk
    hi = torch.minimum(lo + chunk, torch.gather(stop, -1, safe))
    used = blk < n_blocks
    more = torch.stack([safe, torch.where(used, lo, 0), torch.where(used, hi, 0)], -1)
    return torch.cat([first, more], -2).contiguous(), torch.stack([ex_start, ex_stop], -1).contiguous()


def _staged_fit(stream_rows: int, fixed_rows: int, dims: int, elt: int) -> int | None:
    """Pipeline stages (BWD_STAGES, else 1) under which streamed tiles of `stream_rows` x `dims`
    plus resident tiles of `fixed_rows` x `dims` (elements of `elt` bytes) fit BWD_SMEM_BUDGET."""
    for stages in (BWD_STAGES, 1):
        if (stages * stream_rows + fixed_rows) * dims * elt <= BWD_SMEM_BUDGET:
            return stages
    return None


def _dq_tiles(group: int, dims: int, block: int, elt: int) -> tuple[int, int]:
    """(keys per tile, stages) of the dq kernel: G padded rows resident, key tiles streamed."""
    keys = min(block, BWD_KEYS)
    while keys > 16 and _staged_fit(keys, padded(group), dims, elt) is None:
        keys //= 2
    return keys, _staged_fit(keys, padded(group), dims, elt) or 1


def _dkdv_tiles(group: int, dims: int, block: int, elt: int) -> tuple[int, int, int, int]:
    """(keys per program, tokens per tile, padded group, stages) of the dk/dv kernel: the block's
    keys resident, (tokens x heads) row tiles of at least 16 rows streamed, halved until BWD_STAGES
    stages fit (one stage of 128 rows at dk = dv = 256 compiles to 288 KiB of shared memory)."""
    keys = min(block, BWD_WIDE_KEYS if dims > BWD_WIDE_DIMS else BWD_KEYS)
    bt, gp = group_tile(group, BWD_ROWS)
    while bt * gp > 16 and bt > 1 and _staged_fit(bt * gp, keys, dims, elt) != BWD_STAGES:
        bt //= 2
    return keys, bt, gp, _staged_fit(bt * gp, keys, dims, elt) or 1


def _smaller_dkdv_tiles(keys: int, bt: int, gp: int, stages: int) -> list[tuple[int, int, int]]:
    """The tuned (keys, tokens per tile, stages) of `_dkdv_tiles`, then one stage, then half the
    tokens per tile (down to 16 rows or one token), then half the keys (down to 16): the plans that
    `tiles.first_fit` tries where the tuned one exceeds the GPU's shared memory (sm_89: 99 KiB)."""
    plans = [(keys, bt, stages)] + ([(keys, bt, 1)] if stages > 1 else [])
    while bt * gp > 16 and bt > 1:
        bt //= 2
        plans.append((keys, bt, 1))
    while keys > 16:
        keys //= 2
        plans.append((keys, bt, 1))
    return plans


DqStage = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, NSAConfig, float],
                   None]
"""A selected-branch dq pass: (q, k_slc, v_slc, indices, grad_o, gate, lse, delta, dq, config, scale)
adding the branch's share to dq in place (float32)."""


def selected_dq(q: Tensor, k_slc: Tensor, v_slc: Tensor, indices: Tensor, grad_o: Tensor, gate: Tensor,
                lse: Tensor, delta: Tensor, dq: Tensor, config: NSAConfig, scale: float) -> None:
    """The selected branch's share of dq, token by token (a `DqStage`): one program per (token, kv
    head), the G heads as rows, walking the token's n blocks in key tiles."""
    B, T, HQ, dk = q.shape
    H, dv = k_slc.shape[2], v_slc.shape[3]
    G, n, l_slc = HQ // H, indices.shape[3], config.slc_len
    dkp, dvp, bl = padded(dk), padded(dv), padded(l_slc)
    prec, interp = dot_precision(q.dtype), interpreted()

    def launch(plan: tuple[int, int]) -> tuple[tuple, dict]:
        keys, stages = plan
        args = (q, k_slc, v_slc, indices, grad_o, gate, lse, delta, dq, *q.stride()[:3], *k_slc.stride()[:3],
                *v_slc.stride()[:3], *indices.stride()[:3], *grad_o.stride()[:3], *gate.stride()[:3],
                *lse.stride()[:3], *delta.stride()[:3], *dq.stride()[:3], H, G, dk, dv, scale)
        return args, dict(N_SEL=n, L_SLC=l_slc, BK=keys, NSUB=bl // keys, GP=padded(G), DKP=dkp, DVP=dvp,
                          PREC=prec, INTERP=interp, num_warps=BWD_WARPS, num_stages=stages)

    tuned = _dq_tiles(G, dkp + dvp, bl, q.element_size())
    args, kwargs = launch(first_fit(_slc_bwd_dq, staged_plans(*tuned), launch, q.device))
    _slc_bwd_dq[(T, B * H)](*args, **kwargs)


def selected_attention_backward(q: Tensor, k_slc: Tensor, v_slc: Tensor, indices: Tensor, grad_o: Tensor,
                                gate: Tensor, lse: Tensor, delta: Tensor, dq: Tensor, config: NSAConfig,
                                scale: float, chunk_tokens: int = BWD_CHUNK_TOKENS,
                                dq_stage: DqStage | None = None) -> tuple[Tensor, Tensor]:
    """Backward of the selected branch: add its share to dq [B, T, HQ, dk] (float32, in place) and
    return (dk_slc [B, T, H, dk], dv_slc [B, T, H, dv]) in float32.

    q [B, T, HQ, dk], k_slc/v_slc [B, T, H, dk|dv], indices [B, T, H, n] as the forward selected
    them, grad_o [B, T, HQ, dv] (the gradient of the gated o), gate [B, T, HQ] (the activated
    selected gate), lse [B, T, HQ] (the forward's selected log-sum-exp) and delta [B, T, HQ] =
    rowsum(gate * grad_o * o_slc), float32; views with any strides. Deterministic (no atomics);
    `chunk_tokens` caps the token list one dk/dv program walks; `dq_stage` computes dq's share (default
    `selected_dq`, token by token; `selected_blockwise.selected_dq_blockwise` block by block)."""
    B, T, HQ, dk = q.shape
    H, dv = k_slc.shape[2], v_slc.shape[3]
    G = HQ // H
    n = indices.shape[3]
    l_slc = config.slc_len
    n_blocks = triton.cdiv(T, l_slc)
    q, k_slc, v_slc, grad_o = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k_slc, v_slc, grad_o))
    indices = indices.contiguous()
    dkp, dvp, bl = padded(dk), padded(dv), padded(l_slc)
    prec, interp = dot_precision(q.dtype), interpreted()
    (dq_stage or selected_dq)(q, k_slc, v_slc, indices, grad_o, gate, lse, delta, dq, config, scale)
    offsets, tokens = selecting_tokens(indices, n_blocks)
    pieces, extra = token_chunks(offsets, chunk_tokens, T * n)
    n_more = pieces.shape[2] - n_blocks
    dk_slc = torch.empty((B, T, H, dk), dtype=torch.float32, device=q.device)
    dv_slc = torch.empty((B, T, H, dv), dtype=torch.float32, device=q.device)
    pk = torch.empty((B * H, max(n_more, 1), l_slc, dk), dtype=torch.float32, device=q.device)
    pv = torch.empty((B * H, max(n_more, 1), l_slc, dv), dtype=torch.float32, device=q.device)
    keys, bt, gp, stages = _dkdv_tiles(G, dkp + dvp, bl, q.element_size())

    def launch(plan: tuple[int, int, int]) -> tuple[tuple, dict]:
        keys, bt, stages = plan
        args = (q, k_slc, v_slc, grad_o, gate, lse, delta, tokens, pieces, dk_slc, dv_slc, pk, pv,
                *q.stride()[:3], *k_slc.stride()[:3], *v_slc.stride()[:3], *grad_o.stride()[:3],
                *gate.stride()[:3], *lse.stride()[:3], *delta.stride()[:3], tokens.stride(1),
                pieces.stride(1), *dk_slc.stride()[:3], *dv_slc.stride()[:3], pk.stride(0), pk.stride(1),
                pv.stride(0), pv.stride(1), T, H, G, n_blocks, pieces.shape[2], dk, dv, scale)
        return args, dict(L_SLC=l_slc, BK=keys, NSUB=bl // keys, BT=bt, GP=gp, DKP=dkp, DVP=dvp, PREC=prec,
                          INTERP=interp, num_warps=BWD_DKDV_WARPS, num_stages=stages)

    plan = first_fit(_slc_bwd_dkdv, _smaller_dkdv_tiles(keys, bt, gp, stages), launch, q.device)
    keys = plan[0]
    args, kwargs = launch(plan)
    _slc_bwd_dkdv[(pieces.shape[2] * (bl // keys), B * H)](*args, **kwargs)
    if n_more > 0:
        _slc_bwd_reduce[(n_blocks * (bl // keys), B * H)](
            dk_slc, dv_slc, pk, pv, extra, extra.stride(1), dk_slc.stride(0), dk_slc.stride(1),
            dk_slc.stride(2), dv_slc.stride(0), dv_slc.stride(1), dv_slc.stride(2), pk.stride(0),
            pk.stride(1), pv.stride(0), pv.stride(1), T, H, dk, dv, L_SLC=l_slc, BK=keys, NSUB=bl // keys,
            DKP=dkp, DVP=dvp, INTERP=interp, num_warps=BWD_WARPS,
        )
    return dk_slc, dv_slc
