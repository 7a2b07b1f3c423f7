"""The compressed branch and the block importance scores (Eqs. 8-10), as `nsa_torch.ops.compress`.

Query t sees compressed token i iff i*d + l <= t + 1. One program handles a tile of tokens times
the G query heads of one kv head (rows = (token, head) pairs) and runs an online softmax over the
visible compressed tokens, writing o (float32) and the log-sum-exp. A second pass, with the
log-sum-exp known, recomputes p_cmp, sums it over the group and maps it onto selection blocks:
score[j] = sum_i M[i, j] p[i] with M[i, j] = |[i*d, i*d + l) n [j*l', (j+1)*l')| / d. Each
program owns whole blocks (it loads the l/d - 1 tokens of halo a block shares with its left
neighbour), so every score comes from one program and the pass is deterministic. The forward's
selection (`importance_top_n`, Eqs. 9-11) either writes the scores of a chunk of tokens
(`importance_scores`) and ranks them (`select.top_n`), chunk after chunk, or ranks them in the
score pass itself (`running_top_n`: each token's running top n, no score matrix), whichever is
faster for the shape.

Backward (`nsa_triton.ops.attention_grad` has the step): one program per compressed-key tile
walks the row tiles of the tokens that can see it (from token i*d + l - 1 on) and writes that
tile's dK/dV; one program per row tile walks the visible key tiles and adds its dQ. The scores
are not differentiated (the selection is fixed).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from nsa_spec.blocks import n_slc_blocks
from nsa_spec.config import NSAConfig
from torch import Tensor

from nsa_triton.ops.attention_grad import (
    DOT_MIN,
    BackwardTiles,
    backward_tile_plans,
    grad_step,
    grad_step_keys,
    load_rows,
)
from nsa_triton.ops.online import dot, finish, interpreted, online_step
from nsa_triton.ops.select import TOP_N_MAX_BLOCKS, top_n, top_n_insert, top_n_key, top_n_store
from nsa_triton.ops.tiles import dot_precision, first_fit, group_tile, padded, staged_plans

SCORE_ROWS = 128
SCORE_WARPS = 8
"""(token, head) rows per score tile and warps (H200, bf16, paper shape: 9.9 / 38.7 ms against
11.5 / 44.9 ms for 64 rows and 4 warps at T = 64k / 128k)."""
SCORE_CHUNK_ELEMENTS = 1 << 26
"""Float32 scores `importance_top_n` holds at once (256 MiB): the paper shape at T = 128k takes 16
chunks of 8192 tokens instead of a 4 GiB matrix (H200: 61.4 against 59.4 ms for 1 GiB chunks)."""
CMP_BWD_PROGRAMS = 1056
"""Programs the compressed dK/dV pass aims for (8 per SM of an H100/H200): with few kv heads the
key tiles alone are too few (256 at T = 64k, H = 4), so each key tile's queries are cut into
chunks whose partial dK/dV are summed afterwards in chunk order."""
CMP_BWD_CHUNK_TOKENS = 8192
"""At most this many query tokens per dK/dV program, so the earliest key tiles (seen by every
query) do not run long after the rest."""


@triton.jit
def _rows(pid_t, T, G, BT: tl.constexpr, GP: tl.constexpr):
    r = tl.arange(0, BT * GP)
    t = pid_t * BT + r // GP
    g = r % GP
    return t, g, (t < T) & (g < G)


@triton.jit
def _cmp_tile(n0, q, t, row_ok, m, den, acc, K, V, sk_n, sv_n, N, DK, DV, scale,
              L_CMP: tl.constexpr, D_CMP: tl.constexpr, BN: tl.constexpr, DKP: tl.constexpr,
              DVP: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr):
    i = n0 + tl.arange(0, BN)
    ck = tl.arange(0, DKP)
    cv = tl.arange(0, DVP)
    k = tl.load(K + i[:, None] * sk_n + ck[None, :], mask=(i[:, None] < N) & (ck[None, :] < DK), other=0.0)
    v = tl.load(V + i[:, None] * sv_n + cv[None, :], mask=(i[:, None] < N) & (cv[None, :] < DV), other=0.0)
    vis = (i[None, :] * D_CMP + L_CMP <= t[:, None] + 1) & (i[None, :] < N) & row_ok[:, None]
    return online_step(q, k, v, vis, m, den, acc, scale, PREC, INTERP)


@triton.jit
def _cmp_fwd(Q, K, V, O, LSE, sq_b, sq_t, sq_h, sk_b, sk_n, sk_h, sv_b, sv_n, sv_h, so_b, so_t, so_h,
             sl_b, sl_t, sl_h, T, N, H, G, DK, DV, scale, L_CMP: tl.constexpr, D_CMP: tl.constexpr,
             BT: tl.constexpr, GP: tl.constexpr, BN: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
             PREC: tl.constexpr, INTERP: tl.constexpr):
    pid_t = tl.program_id(0)
    b = (tl.program_id(1) // H).to(tl.int64)
    h = tl.program_id(1) % H
    t, g, row_ok = _rows(pid_t, T, G, BT, GP)
    hq = h * G + g
    ck = tl.arange(0, DKP)
    cv = tl.arange(0, DVP)
    q = tl.load(Q + b * sq_b + t.to(tl.int64)[:, None] * sq_t + hq[:, None] * sq_h + ck[None, :],
                mask=row_ok[:, None] & (ck[None, :] < DK), other=0.0)
    m = tl.full([BT * GP], float("-inf"), tl.float32)
    den = tl.zeros([BT * GP], tl.float32)
    acc = tl.zeros([BT * GP, DVP], tl.float32)
    t_last = tl.minimum(pid_t * BT + BT - 1, T - 1)
    n_hi = tl.minimum(tl.maximum(t_last + 1 - L_CMP + D_CMP, 0) // D_CMP, N)
    K += b * sk_b + h * sk_h
    V += b * sv_b + h * sv_h
    if INTERP:
        n0 = 0
        while n0 < n_hi:
            m, den, acc = _cmp_tile(n0, q, t, row_ok, m, den, acc, K, V, sk_n, sv_n, N, DK, DV,
                                    scale, L_CMP, D_CMP, BN, DKP, DVP, PREC, INTERP)
            n0 += BN
    else:
        for n0 in range(0, n_hi, BN):
            m, den, acc = _cmp_tile(n0, q, t, row_ok, m, den, acc, K, V, sk_n, sv_n, N, DK, DV,
                                    scale, L_CMP, D_CMP, BN, DKP, DVP, PREC, INTERP)
    o, lse = finish(m, den, acc)
    rows = b * so_b + t.to(tl.int64) * so_t + hq * so_h
    tl.store(O + rows[:, None] + cv[None, :], o, mask=row_ok[:, None] & (cv[None, :] < DV))
    tl.store(LSE + b * sl_b + t.to(tl.int64) * sl_t + hq * sl_h, lse, mask=row_ok)


@triton.jit
def _block_scores(j0, q, t, row_ok, lse, K, sk_n, N, DK, scale, L_CMP: tl.constexpr, D_CMP: tl.constexpr,
                  L_SLC: tl.constexpr, BJ: tl.constexpr, BT: tl.constexpr, GP: tl.constexpr,
                  BN: tl.constexpr, BJP: tl.constexpr, DKP: tl.constexpr, PREC: tl.constexpr,
                  INTERP: tl.constexpr):
    """Group-summed scores of selection blocks j0 .. j0 + BJ - 1 for the tile's BT tokens -> score
    [BT, BJP] (padded columns 0), from the BN compressed tokens that overlap them (with the halo)."""
    ck = tl.arange(0, DKP)
    jl = tl.arange(0, BJP)
    i = j0 * (L_SLC // D_CMP) - (L_CMP // D_CMP - 1) + tl.arange(0, BN)
    in_range = (i >= 0) & (i < N)
    k = tl.load(K + i[:, None] * sk_n + ck[None, :], mask=in_range[:, None] & (ck[None, :] < DK), other=0.0)
    s = dot(q, tl.trans(k), PREC, INTERP) * scale
    vis = (i[None, :] * D_CMP + L_CMP <= t[:, None] + 1) & in_range[None, :] & row_ok[:, None]
    p = tl.exp(tl.where(vis, s - lse[:, None], float("-inf")))  # [BT * GP, BN]
    j = j0 + jl
    lo = tl.maximum(i[:, None] * D_CMP, j[None, :] * L_SLC)
    hi = tl.minimum(i[:, None] * D_CMP + L_CMP, (j[None, :] + 1) * L_SLC)
    w = tl.maximum(hi - lo, 0).to(tl.float32) / D_CMP
    w = tl.where(in_range[:, None] & (jl[None, :] < BJ), w, 0.0)  # [BN, BJP] overlap weights
    # An explicit dot at the inputs' precision: a broadcast multiply-sum is rewritten by the
    # compiler into a tf32 dot even for float32 inputs (5e-4 relative error on the H200).
    return tl.sum(tl.reshape(dot(p, w, PREC, INTERP), [BT, GP, BJP]), 1)  # [BT, BJP]


@triton.jit
def _score_rows(Q, LSE, sq_b, sq_t, sq_h, sl_b, sl_t, sl_h, T0, T, N, H, G, DK, L_CMP: tl.constexpr,
                D_CMP: tl.constexpr, L_SLC: tl.constexpr, BT: tl.constexpr, GP: tl.constexpr,
                DKP: tl.constexpr):
    """This program's rows for a score pass over tokens T0 .. T - 1: batch b, kv head h, q [BT * GP,
    DKP], t, row_ok, the compressed lse (0 where no token is visible), the tile's tokens [BT] and
    j_hi, one past the last block that any of them sees (above every token's current block)."""
    pid_t = tl.program_id(0)
    b = (tl.program_id(1) // H).to(tl.int64)
    h = tl.program_id(1) % H
    t, g, row_ok = _rows(pid_t, T - T0, G, BT, GP)
    t += T0
    hq = h * G + g
    ck = tl.arange(0, DKP)
    q = tl.load(Q + b * sq_b + t.to(tl.int64)[:, None] * sq_t + hq[:, None] * sq_h + ck[None, :],
                mask=row_ok[:, None] & (ck[None, :] < DK), other=0.0)  # [BT * GP, DKP]
    lse = tl.load(LSE + b * sl_b + t.to(tl.int64) * sl_t + hq * sl_h, mask=row_ok, other=float("-inf"))
    lse = tl.where(lse == float("-inf"), 0.0, lse)
    t_last = tl.minimum(T0 + pid_t * BT + BT - 1, T - 1)
    n_hi = tl.minimum(tl.maximum(t_last + 1 - L_CMP + D_CMP, 0) // D_CMP, N)
    j_hi = (n_hi * D_CMP + L_CMP + L_SLC - 1) // L_SLC
    tok = T0 + pid_t * BT + tl.arange(0, BT)
    return b, h, q, t, row_ok, lse, tok, j_hi


@triton.jit
def _scores_tile(j0, q, t, row_ok, lse, tok, K, S, sk_n, ss_t, N, T0, T, NB, DK, scale,
                 L_CMP: tl.constexpr, D_CMP: tl.constexpr, L_SLC: tl.constexpr, BJ: tl.constexpr,
                 BT: tl.constexpr, GP: tl.constexpr, BN: tl.constexpr, BJP: tl.constexpr,
                 DKP: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr):
    score = _block_scores(j0, q, t, row_ok, lse, K, sk_n, N, DK, scale, L_CMP, D_CMP, L_SLC, BJ, BT, GP,
                          BN, BJP, DKP, PREC, INTERP)  # [BT, BJP]
    jl = tl.arange(0, BJP)
    j = j0 + jl
    tl.store(S + (tok - T0).to(tl.int64)[:, None] * ss_t + j[None, :], score,
             mask=(tok[:, None] < T) & (jl[None, :] < BJ) & (j[None, :] < NB))


@triton.jit
def _cmp_scores(Q, K, LSE, S, sq_b, sq_t, sq_h, sk_b, sk_n, sk_h, sl_b, sl_t, sl_h, ss_b, ss_t, ss_h,
                T0, T, N, H, G, DK, NB, scale, L_CMP: tl.constexpr, D_CMP: tl.constexpr,
                L_SLC: tl.constexpr, BJ: tl.constexpr, BT: tl.constexpr, GP: tl.constexpr,
                BN: tl.constexpr, BJP: tl.constexpr, DKP: tl.constexpr, PREC: tl.constexpr,
                INTERP: tl.constexpr):
    b, h, q, t, row_ok, lse, tok, j_hi = _score_rows(Q, LSE, sq_b, sq_t, sq_h, sl_b, sl_t, sl_h, T0, T, N, H,
                                                     G, DK, L_CMP, D_CMP, L_SLC, BT, GP, DKP)
    K += b * sk_b + h * sk_h
    S += b * ss_b + h * ss_h
    if INTERP:
        j0 = 0
        while j0 < j_hi:
            _scores_tile(j0, q, t, row_ok, lse, tok, K, S, sk_n, ss_t, N, T0, T, NB, DK, scale, L_CMP,
                         D_CMP, L_SLC, BJ, BT, GP, BN, BJP, DKP, PREC, INTERP)
            j0 += BJ
    else:
        for j0 in range(0, j_hi, BJ):
            _scores_tile(j0, q, t, row_ok, lse, tok, K, S, sk_n, ss_t, N, T0, T, NB, DK, scale, L_CMP,
                         D_CMP, L_SLC, BJ, BT, GP, BN, BJP, DKP, PREC, INTERP)


@triton.jit
def _top_n_tile(j0, q, t, row_ok, lse, c, best, best_j, K, sk_n, N, DK, scale, L_CMP: tl.constexpr,
                D_CMP: tl.constexpr, L_SLC: tl.constexpr, BJ: tl.constexpr, BT: tl.constexpr,
                GP: tl.constexpr, BN: tl.constexpr, BJP: tl.constexpr, DKP: tl.constexpr, N_SEL: tl.constexpr,
                NP: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr):
    score = _block_scores(j0, q, t, row_ok, lse, K, sk_n, N, DK, scale, L_CMP, D_CMP, L_SLC, BJ, BT, GP,
                          BN, BJP, DKP, PREC, INTERP)  # [BT, BJP]
    jl = tl.arange(0, BJP)
    j = j0 + jl
    key = tl.where(jl[None, :] < BJ, top_n_key(score, j[None, :], c[:, None]), float("-inf"))  # [BT, BJP]
    return top_n_insert(best, best_j, key, j0, N_SEL, NP, BJP, min(BJ, N_SEL))


@triton.jit
def _cmp_top_n(Q, K, LSE, IDX, sq_b, sq_t, sq_h, sk_b, sk_n, sk_h, sl_b, sl_t, sl_h, si_b, si_t, si_h,
               T, N, H, G, DK, scale, L_CMP: tl.constexpr, D_CMP: tl.constexpr, L_SLC: tl.constexpr,
               BJ: tl.constexpr, BT: tl.constexpr, GP: tl.constexpr, BN: tl.constexpr, BJP: tl.constexpr,
               DKP: tl.constexpr, N_SEL: tl.constexpr, NP: tl.constexpr, PREC: tl.constexpr,
               INTERP: tl.constexpr):
    tl.static_assert(NP >= N_SEL, "the running top-n keeps at least n blocks")
    b, h, q, t, row_ok, lse, tok, j_hi = _score_rows(Q, LSE, sq_b, sq_t, sq_h, sl_b, sl_t, sl_h, 0, T, N, H,
                                                     G, DK, L_CMP, D_CMP, L_SLC, BT, GP, DKP)
    c = tok // L_SLC  # [BT] current blocks, all < j_hi
    slot = tl.arange(0, NP)
    best = tl.where(slot[None, :] < N_SEL, float("-inf"), float("inf")) + tl.zeros([BT, NP], tl.float32)
    best_j = tl.full([BT, NP], -1, tl.int32)
    K += b * sk_b + h * sk_h
    if INTERP:
        j0 = 0
        while j0 < j_hi:
            best, best_j = _top_n_tile(j0, q, t, row_ok, lse, c, best, best_j, K, sk_n, N, DK, scale, L_CMP,
                                       D_CMP, L_SLC, BJ, BT, GP, BN, BJP, DKP, N_SEL, NP, PREC,
                                       INTERP)
            j0 += BJ
    else:
        for j0 in range(0, j_hi, BJ):
            best, best_j = _top_n_tile(j0, q, t, row_ok, lse, c, best, best_j, K, sk_n, N, DK, scale, L_CMP,
                                       D_CMP, L_SLC, BJ, BT, GP, BN, BJP, DKP, N_SEL, NP, PREC,
                                       INTERP)
    top_n_store(best, best_j, IDX + b * si_b + tok.to(tl.int64) * si_t + h * si_h, tok < T, N_SEL, NP)


def _score_plans(rows: int) -> list[tuple[int, int]]:
    """(rows per tile, stages) a score pass tries, the first that fits the GPU's shared memory:
    fewer stages, then fewer rows (its key tile holds whole selection blocks and their halo, so
    it cannot shrink)."""
    return [(rows, 3), (rows, 2)] + [(rows >> i, 1) for i in range(rows.bit_length()) if rows >> i >= 16]


def _score_tiles(group: int, config: NSAConfig, rows: int, bn: int) -> tuple[int, int, int, int]:
    """(tokens per tile, padded group, compressed tokens per step, selection blocks per step) of a
    score pass: a step's blocks are those whose compressed tokens, with the halo, fit the step."""
    bt, gp = group_tile(group, rows)
    per_block = config.slc_len // config.cmp_stride
    halo = config.cmp_len // config.cmp_stride - 1
    bn = max(bn, padded(per_block + halo))
    return bt, gp, bn, (bn - halo) // per_block


def compressed_attention(q: Tensor, k_cmp: Tensor, v_cmp: Tensor, o: Tensor, lse: Tensor,
                         config: NSAConfig, scale: float, rows: int = 64, bn: int = 64,
                         num_warps: int = 4) -> None:
    """Write the compressed branch of q [B, T, HQ, dk] over k_cmp/v_cmp [B, N, H, d] into
    o [B, T, HQ, dv] (float32) and lse [B, T, HQ] (a float32 view, -inf where no token is visible).
    `bn` keys per tile at 3 stages unless that exceeds the GPU's shared memory (`tiles.first_fit`)."""
    B, T, HQ, dk = q.shape
    N, H, dv = k_cmp.shape[1], k_cmp.shape[2], v_cmp.shape[3]
    bt, gp = group_tile(HQ // H, rows)

    def launch(plan: tuple[int, int]) -> tuple[tuple, dict]:
        keys, stages = plan
        args = (q, k_cmp, v_cmp, o, lse, q.stride(0), q.stride(1), q.stride(2), k_cmp.stride(0),
                k_cmp.stride(1), k_cmp.stride(2), v_cmp.stride(0), v_cmp.stride(1), v_cmp.stride(2),
                o.stride(0), o.stride(1), o.stride(2), lse.stride(0), lse.stride(1), lse.stride(2),
                T, N, H, HQ // H, dk, dv, scale)
        return args, dict(L_CMP=config.cmp_len, D_CMP=config.cmp_stride, BT=bt, GP=gp, BN=keys,
                          DKP=padded(dk), DVP=padded(dv), PREC=dot_precision(q.dtype), INTERP=interpreted(),
                          num_warps=num_warps, num_stages=stages)

    args, kwargs = launch(first_fit(_cmp_fwd, staged_plans(bn), launch, q.device))
    _cmp_fwd[(triton.cdiv(T, bt), B * H)](*args, **kwargs)


def importance_scores(q: Tensor, k_cmp: Tensor, lse: Tensor, n_blocks: int, config: NSAConfig,
                      scale: float, rows: int = SCORE_ROWS, bn: int = 64, num_warps: int = SCORE_WARPS,
                      first: int = 0, stop: int | None = None) -> Tensor:
    """Group-summed block scores (Eqs. 9-10) of tokens first .. stop - 1 (default: all) ->
    [B, stop - first, H, n_blocks] float32, given the compressed branch's lse [B, T, HQ]. Blocks
    no query of a tile can see are 0."""
    B, T, HQ, dk = q.shape
    N, H = k_cmp.shape[1], k_cmp.shape[2]
    stop = T if stop is None else stop
    scores = torch.zeros((B, stop - first, H, n_blocks), dtype=torch.float32, device=q.device)

    def launch(plan: tuple[int, int]) -> tuple[tuple, dict]:
        bt, gp, keys, bj = _score_tiles(HQ // H, config, plan[0], bn)
        args = (q, k_cmp, lse, scores, q.stride(0), q.stride(1), q.stride(2), k_cmp.stride(0),
                k_cmp.stride(1), k_cmp.stride(2), lse.stride(0), lse.stride(1), lse.stride(2),
                scores.stride(0), scores.stride(1), scores.stride(2), first, stop, N, H, HQ // H, dk,
                n_blocks, scale)
        return args, dict(L_CMP=config.cmp_len, D_CMP=config.cmp_stride, L_SLC=config.slc_len, BJ=bj, BT=bt,
                          GP=gp, BN=keys, BJP=padded(bj), DKP=padded(dk), PREC=dot_precision(q.dtype),
                          INTERP=interpreted(), num_warps=num_warps, num_stages=plan[1])

    args, kwargs = launch(first_fit(_cmp_scores, _score_plans(rows), launch, q.device))
    _cmp_scores[(triton.cdiv(stop - first, kwargs["BT"]), B * H)](*args, **kwargs)
    return scores


def importance_top_n(q: Tensor, k_cmp: Tensor, lse: Tensor, config: NSAConfig, scale: float) -> Tensor:
    """Eqs. 9-11 -> indices [B, T, H, n] (int32, ascending, -1 padded), given the compressed
    branch's lse [B, T, HQ]: the forward's selection.

    For G >= 2, in chunks of query tokens: `importance_scores` of a chunk, then `select.top_n`
    (the faster form there; a chunk's score matrix holds at most SCORE_CHUNK_ELEMENTS floats).
    For G = 1, or rows of more than TOP_N_MAX_BLOCKS blocks, which one program of `top_n` cannot
    hold, `running_top_n`. Both pick the same blocks, ties included."""
    B, T, HQ, _ = q.shape
    H = k_cmp.shape[2]
    nb = n_slc_blocks(T, config)
    if HQ // H == 1 or nb > TOP_N_MAX_BLOCKS:
        return running_top_n(q, k_cmp, lse, config, scale)
    indices = torch.empty((B, T, H, config.top_n), dtype=torch.int32, device=q.device)
    chunk = max(1, SCORE_CHUNK_ELEMENTS // (B * H * nb))
    for first in range(0, T, chunk):
        stop = min(first + chunk, T)
        scores = importance_scores(q, k_cmp, lse, nb, config, scale, first=first, stop=stop)
        top_n(scores, config, first=first, out=indices)
        del scores  # before the next chunk's is allocated: one chunk at a time
    return indices


def running_top_n(q: Tensor, k_cmp: Tensor, lse: Tensor, config: NSAConfig, scale: float,
                  rows: int = 64, bn: int = 64, num_warps: int = 4) -> Tensor:
    """Eqs. 9-11 in one pass -> indices [B, T, H, n] (int32, ascending, -1 padded), as `top_n` of
    `importance_scores`, given the compressed branch's lse [B, T, HQ].

    Each program ranks the block scores of its tokens as it computes them, a chunk of blocks at a
    time (`select.top_n_insert`), and keeps only the running top n: no score matrix, so memory
    beyond the inputs is the indices. The scores are `importance_scores`' own (same tiles, same
    arithmetic), so the picks are the two-pass ones, ties included."""
    B, T, HQ, dk = q.shape
    N, H = k_cmp.shape[1], k_cmp.shape[2]
    indices = torch.empty((B, T, H, config.top_n), dtype=torch.int32, device=q.device)

    def launch(plan: tuple[int, int]) -> tuple[tuple, dict]:
        bt, gp, keys, bj = _score_tiles(HQ // H, config, plan[0], bn)
        args = (q, k_cmp, lse, indices, q.stride(0), q.stride(1), q.stride(2), k_cmp.stride(0),
                k_cmp.stride(1), k_cmp.stride(2), lse.stride(0), lse.stride(1), lse.stride(2),
                indices.stride(0), indices.stride(1), indices.stride(2), T, N, H, HQ // H, dk, scale)
        return args, dict(L_CMP=config.cmp_len, D_CMP=config.cmp_stride, L_SLC=config.slc_len, BJ=bj, BT=bt,
                          GP=gp, BN=keys, BJP=padded(bj), DKP=padded(dk), N_SEL=config.top_n,
                          NP=triton.next_power_of_2(config.top_n), PREC=dot_precision(q.dtype),
                          INTERP=interpreted(), num_warps=num_warps, num_stages=plan[1])

    args, kwargs = launch(first_fit(_cmp_top_n, _score_plans(rows), launch, q.device))
    _cmp_top_n[(triton.cdiv(T, kwargs["BT"]), B * H)](*args, **kwargs)
    return indices


@triton.jit
def _cmp_dkdv_rows(pid_t, k, v, i, dk, dv, Q, DO, GATE, LSE, DELTA, sq_t, sq_h, so_t, so_h, sg_t, sg_h,
                   sl_t, sl_h, sd_t, sd_h, h, T, N, G, DK, DV, scale, L_CMP: tl.constexpr,
                   D_CMP: tl.constexpr, BT: tl.constexpr, GP: tl.constexpr, DKP: tl.constexpr,
                   DVP: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr):
    t, g, row_ok = _rows(pid_t, T, G, BT, GP)
    q, do, gate, lse, delta = load_rows(Q, DO, GATE, LSE, DELTA, t, h * G + g, row_ok, sq_t, sq_h, so_t,
                                        so_h, sg_t, sg_h, sl_t, sl_h, sd_t, sd_h, DK, DV, DKP, DVP)
    vis = (i[:, None] * D_CMP + L_CMP <= t[None, :] + 1) & (i[:, None] < N) & row_ok[None, :]
    pgt, dst = grad_step_keys(q, k, v, do, gate, lse, delta, vis, scale, PREC,
                              INTERP)  # [BN, BT * GP] x2
    dv += dot(pgt.to(do.dtype), do, PREC, INTERP)  # [BN, DVP]
    dk += dot(dst.to(q.dtype), q, PREC, INTERP)  # [BN, DKP]
    return dk, dv


@triton.jit
def _cmp_bwd_dkdv(Q, K, V, DO, GATE, LSE, DELTA, GK, GV, sq_b, sq_t, sq_h, sk_b, sk_n, sk_h, sv_b, sv_n,
                  sv_h, so_b, so_t, so_h, sg_b, sg_t, sg_h, sl_b, sl_t, sl_h, sd_b, sd_t, sd_h, sgk_c,
                  sgk_b, sgk_n, sgk_h, sgv_c, sgv_b, sgv_n, sgv_h, T, N, H, G, DK, DV, scale, CHUNK,
                  L_CMP: tl.constexpr,
                  D_CMP: tl.constexpr, BT: tl.constexpr, GP: tl.constexpr, BN: tl.constexpr,
                  DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr):
    tl.static_assert((BT * GP >= DOT_MIN) & (BN >= DOT_MIN), "tl.dot needs 16 rows and keys")
    pid_n = tl.program_id(0)
    b = (tl.program_id(1) // H).to(tl.int64)
    h = tl.program_id(1) % H
    c = tl.program_id(2)  # this program's chunk of CHUNK row tiles; it writes partial sums
    GK += c.to(tl.int64) * sgk_c
    GV += c.to(tl.int64) * sgv_c
    i = pid_n * BN + tl.arange(0, BN)
    i64 = i.to(tl.int64)
    ck = tl.arange(0, DKP)
    cv = tl.arange(0, DVP)
    k_ok = (i[:, None] < N) & (ck[None, :] < DK)
    v_ok = (i[:, None] < N) & (cv[None, :] < DV)
    k = tl.load(K + b * sk_b + h * sk_h + i64[:, None] * sk_n + ck[None, :], mask=k_ok,
                other=0.0)  # [BN, DKP]
    v = tl.load(V + b * sv_b + h * sv_h + i64[:, None] * sv_n + cv[None, :], mask=v_ok,
                other=0.0)  # [BN, DVP]
    dk = tl.zeros([BN, DKP], tl.float32)
    dv = tl.zeros([BN, DVP], tl.float32)
    Q += b * sq_b
    DO += b * so_b
    GATE += b * sg_b
    LSE += b * sl_b
    DELTA += b * sd_b
    tile_lo = tl.maximum((pid_n * BN * D_CMP + L_CMP - 1) // BT, c * CHUNK)
    tile_hi = tl.minimum(tl.cdiv(T, BT), c * CHUNK + CHUNK)
    if INTERP:
        pid_t = tile_lo
        while pid_t < tile_hi:
            dk, dv = _cmp_dkdv_rows(pid_t, k, v, i, dk, dv, Q, DO, GATE, LSE, DELTA, sq_t, sq_h, so_t, so_h,
                                    sg_t, sg_h, sl_t, sl_h, sd_t, sd_h, h, T, N, G, DK, DV, scale, L_CMP,
                                    D_CMP, BT, GP, DKP, DVP, PREC, INTERP)
            pid_t += 1
    else:
        for pid_t in range(tile_lo, tile_hi):
            dk, dv = _cmp_dkdv_rows(pid_t, k, v, i, dk, dv, Q, DO, GATE, LSE, DELTA, sq_t, sq_h, so_t, so_h,
                                    sg_t, sg_h, sl_t, sl_h, sd_t, sd_h, h, T, N, G, DK, DV, scale, L_CMP,
                                    D_CMP, BT, GP, DKP, DVP, PREC, INTERP)
    tl.store(GK + b * sgk_b + h * sgk_h + i64[:, None] * sgk_n + ck[None, :], dk * scale, mask=k_ok)
    tl.store(GV + b * sgv_b + h * sgv_h + i64[:, None] * sgv_n + cv[None, :], dv, mask=v_ok)


@triton.jit
def _cmp_dq_keys(n0, q, do, gate, lse, delta, t, row_ok, dq, K, V, sk_n, sv_n, N, DK, DV, scale,
                 L_CMP: tl.constexpr, D_CMP: tl.constexpr, BN: tl.constexpr, DKP: tl.constexpr,
                 DVP: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr):
    i = n0 + tl.arange(0, BN)
    i64 = i.to(tl.int64)
    ck = tl.arange(0, DKP)
    cv = tl.arange(0, DVP)
    k = tl.load(K + i64[:, None] * sk_n + ck[None, :], mask=(i[:, None] < N) & (ck[None, :] < DK),
                other=0.0)  # [BN, DKP]
    v = tl.load(V + i64[:, None] * sv_n + cv[None, :], mask=(i[:, None] < N) & (cv[None, :] < DV),
                other=0.0)  # [BN, DVP]
    vis = (i[None, :] * D_CMP + L_CMP <= t[:, None] + 1) & (i[None, :] < N) & row_ok[:, None]
    _, ds = grad_step(q, k, v, do, gate, lse, delta, vis, scale, PREC, INTERP)  # [BT * GP, BN]
    return dq + dot(ds.to(k.dtype), k, PREC, INTERP)  # [BT * GP, DKP]


@triton.jit
def _cmp_bwd_dq(Q, K, V, DO, GATE, LSE, DELTA, GQ, sq_b, sq_t, sq_h, sk_b, sk_n, sk_h, sv_b, sv_n, sv_h,
                so_b, so_t, so_h, sg_b, sg_t, sg_h, sl_b, sl_t, sl_h, sd_b, sd_t, sd_h, sgq_b, sgq_t, sgq_h,
                T, N, H, G, DK, DV, scale, L_CMP: tl.constexpr, D_CMP: tl.constexpr, BT: tl.constexpr,
                GP: tl.constexpr, BN: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
                PREC: tl.constexpr, INTERP: tl.constexpr):
    tl.static_assert((BT * GP >= DOT_MIN) & (BN >= DOT_MIN), "tl.dot needs 16 rows and keys")
    pid_t = tl.program_id(0)
    b = (tl.program_id(1) // H).to(tl.int64)
    h = tl.program_id(1) % H
    t, g, row_ok = _rows(pid_t, T, G, BT, GP)
    hq = h * G + g
    q, do, gate, lse, delta = load_rows(Q + b * sq_b, DO + b * so_b, GATE + b * sg_b, LSE + b * sl_b,
                                        DELTA + b * sd_b, t, hq, row_ok, sq_t, sq_h, so_t, so_h, sg_t,
                                        sg_h, sl_t, sl_h, sd_t, sd_h, DK, DV, DKP, DVP)
    dq = tl.zeros([BT * GP, DKP], tl.float32)
    t_last = tl.minimum(pid_t * BT + BT - 1, T - 1)
    n_hi = tl.minimum(tl.maximum(t_last + 1 - L_CMP + D_CMP, 0) // D_CMP, N)
    K += b * sk_b + h * sk_h
    V += b * sv_b + h * sv_h
    if INTERP:
        n0 = 0
        while n0 < n_hi:
            dq = _cmp_dq_keys(n0, q, do, gate, lse, delta, t, row_ok, dq, K, V, sk_n, sv_n, N, DK, DV,
                              scale, L_CMP, D_CMP, BN, DKP, DVP, PREC, INTERP)
            n0 += BN
    else:
        for n0 in range(0, n_hi, BN):
            dq = _cmp_dq_keys(n0, q, do, gate, lse, delta, t, row_ok, dq, K, V, sk_n, sv_n, N, DK, DV,
                              scale, L_CMP, D_CMP, BN, DKP, DVP, PREC, INTERP)
    ck = tl.arange(0, DKP)
    out = GQ + b * sgq_b + t.to(tl.int64)[:, None] * sgq_t + hq[:, None] * sgq_h + ck[None, :]
    out_ok = row_ok[:, None] & (ck[None, :] < DK)
    tl.store(out, tl.load(out, mask=out_ok, other=0.0) + dq * scale, mask=out_ok)


def compressed_attention_backward(q: Tensor, k_cmp: Tensor, v_cmp: Tensor, grad_o: Tensor, gate: Tensor,
                                  lse: Tensor, delta: Tensor, dq: Tensor, config: NSAConfig, scale: float,
                                  tiles: BackwardTiles | None = None,
                                  dq_tiles: BackwardTiles | None = None) -> tuple[Tensor, Tensor]:
    """Gradients of the compressed branch: adds its part to dq (float32 [B, T, HQ, dk]) and
    returns dk_cmp, dv_cmp (float32 [B, N, H, dk|dv]).

    grad_o [B, T, HQ, dv] is the gradient of the gated output; gate [B, T, HQ] this branch's
    gate, lse its forward log-sum-exp, delta its rowsum(dO * O) (views, float32 for lse/delta).
    `tiles` are the dK/dV kernel's, `dq_tiles` the dQ kernel's (default: `tiles` when given, else the
    tuned `backward_tile_plans`, the first that fits the GPU's shared memory).
    """
    B, T, HQ, dk = q.shape
    N, H, dv = k_cmp.shape[1], k_cmp.shape[2], v_cmp.shape[3]
    G = HQ // H
    if N == 0:
        return (torch.zeros((B, N, H, dk), dtype=torch.float32, device=q.device),
                torch.zeros((B, N, H, dv), dtype=torch.float32, device=q.device))
    dkdv_plans, dq_plans = backward_tile_plans(group_tile(G, 1)[1], dk, dv, q.element_size())
    if tiles is not None:
        dkdv_plans, dq_plans = [tiles], [dq_tiles or tiles]
    elif dq_tiles is not None:
        dq_plans = [dq_tiles]
    common = dict(T=T, N=N, H=H, G=G, DK=dk, DV=dv, scale=scale, L_CMP=config.cmp_len,
                  D_CMP=config.cmp_stride, DKP=padded(dk), DVP=padded(dv), PREC=dot_precision(q.dtype),
                  INTERP=interpreted())
    strides = (q.stride(0), q.stride(1), q.stride(2), k_cmp.stride(0), k_cmp.stride(1), k_cmp.stride(2),
               v_cmp.stride(0), v_cmp.stride(1), v_cmp.stride(2), grad_o.stride(0), grad_o.stride(1),
               grad_o.stride(2), gate.stride(0), gate.stride(1), gate.stride(2), lse.stride(0),
               lse.stride(1), lse.stride(2), delta.stride(0), delta.stride(1), delta.stride(2))

    def chunking(t: BackwardTiles) -> tuple[int, int]:
        """(row tiles per program, programs per key tile) of the dK/dV pass under tiles t."""
        bt = group_tile(G, t.rows)[0]
        chunks = max(triton.cdiv(CMP_BWD_PROGRAMS, triton.cdiv(N, t.keys) * B * H),
                     triton.cdiv(T, CMP_BWD_CHUNK_TOKENS))
        chunk = triton.cdiv(triton.cdiv(T, bt), chunks)
        return chunk, triton.cdiv(triton.cdiv(T, bt), chunk)

    def dkdv_launch(t: BackwardTiles, parts: tuple[Tensor, Tensor] | None = None) -> tuple[tuple, dict]:
        """The dK/dV kernel's arguments; without `parts` (the fit's compile), dtypes stand for them."""
        bt, gp = group_tile(G, t.rows)
        chunk = chunking(t)[0]
        part_strides = [(B * N * H * d, N * H * d, H * d, d) for d in (dk, dv)]
        k_part, v_part = parts or (torch.float32, torch.float32)
        return ((q, k_cmp, v_cmp, grad_o, gate, lse, delta, k_part, v_part, *strides, *part_strides[0],
                 *part_strides[1]),
                dict(CHUNK=chunk, BT=bt, GP=gp, BN=t.keys, num_warps=t.num_warps, num_stages=t.num_stages,
                     **common))

    def dq_launch(t: BackwardTiles) -> tuple[tuple, dict]:
        bt, gp = group_tile(G, t.rows)
        return ((q, k_cmp, v_cmp, grad_o, gate, lse, delta, dq, *strides, *dq.stride()[:3]),
                dict(BT=bt, GP=gp, BN=t.keys, num_warps=t.num_warps, num_stages=t.num_stages, **common))

    tiles = first_fit(_cmp_bwd_dkdv, dkdv_plans, dkdv_launch, q.device)
    chunks = chunking(tiles)[1]
    dk_part = torch.empty((chunks, B, N, H, dk), dtype=torch.float32, device=q.device)
    dv_part = torch.empty((chunks, B, N, H, dv), dtype=torch.float32, device=q.device)
    args, kwargs = dkdv_launch(tiles, (dk_part, dv_part))
    _cmp_bwd_dkdv[(triton.cdiv(N, tiles.keys), B * H, chunks)](*args, **kwargs)
    dk_cmp, dv_cmp = dk_part.sum(0), dv_part.sum(0)  # fixed order: deterministic
    dq_tiles = first_fit(_cmp_bwd_dq, dq_plans, dq_launch, q.device)
    args, kwargs = dq_launch(dq_tiles)
    _cmp_bwd_dq[(triton.cdiv(T, kwargs["BT"]), B * H)](*args, **kwargs)
    return dk_cmp, dv_cmp
