"""The decode step (NSA.md, Decode) for a batch of sequences of their own lengths, as
`nsa_torch.ops.decode.decode_attention`, on the cache layout v2 (`nsa_spec.contract.DecodeCache`).

Sequence b holds S_b = lengths[b] tokens and attends from position S_b - 1 to its N_cmp(S_b)
compressed tokens (rows 0.. of k_cmp/v_cmp), to the slc rows of its selected blocks clamped to
S_b, and to positions max(0, S_b - w) .. S_b - 1 of the window ring (row p % w). At long S the cost
is reading, so each (sequence, kv head)'s rows are split over several programs, flash-decoding
style: a program folds its share for the G query heads of the group (one pass over each row) into
a float32 partial (running max m, denominator, unnormalised accumulator), and merges walk the
partials in a fixed order (deterministic, no atomics). Four launches:

1. `_split_cmp_win`: programs [0, P_cmp) take consecutive tiles of the compressed tokens (a tile
   is whole selection blocks: BJ blocks of l'/d tokens), programs [P_cmp, P_cmp + P_win) a share of
   the window. A compressed tile also leaves, per head g with tile max mt_g, the block-score
   partials part[g, jj] = sum_i M[i, j0 + jj] exp(s_gi - mt_g) (Eq. 9's overlap M) for its BJ
   blocks and the right neighbour, the one block its last tokens spill into.
2. `_select`: one program per (sequence, kv head) merges the compressed (m, den) partials into
   each head's softmax and forms score[j] = sum_g sum_tiles part * exp(mt_g - m_g) / den_g, i.e.
   Eqs. 8-10 with p_cmp over every compressed token of the sequence, then Eq. 11
   (`select.top_n_row`: forced blocks, ties to the lower index).
3. `_split_slc`: programs take a share of the n selected blocks; all G heads of the group share
   one pass over each block's rows, clamped to S_b.
4. `_merge_combine`: one program per (sequence, query head) merges each branch's partials, gates
   them (Eq. 5) and writes o and the three lse; head 0 of a group sums the rows read.

With `DecodeTiles(fuse_select=True)` there is no launch 2: every program of launch 3 computes its
row's scores and picks itself (the same ones; the first program writes the indices).

The grid depends on the shapes and the cache capacity only, never on the lengths' values (a CUDA
graph captures the step): each program derives its share from S_b on the device, and a share
past the sequence writes an empty partial. Rows read are counted by the programs that load them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from nsa_spec.blocks import n_cmp
from nsa_spec.config import NSAConfig
from nsa_spec.errors import InvalidInputError, UnsupportedError
from torch import Tensor

from nsa_triton.ops.online import dot, finish, interpreted, online_step
from nsa_triton.ops.select import TOP_N_MAX_BLOCKS, top_n_pick, top_n_row
from nsa_triton.ops.tiles import dot_precision, padded

SPLIT_PROGRAMS = 264
"""Programs a split launch aims for (2 per SM of an H100/H200's 132): the splits per (sequence,
kv head) are this divided by B * H, within the bounds below."""
SPLIT_KEYS = 128
"""Key rows per split at least: a split writes G * dv float32 partials (8 KiB at G=16, dv=128)
against (dk + dv) * 2 bytes per row it reads, so short splits pay more in partials than keys."""
CMP_TILE_TOKENS = 64
"""Compressed tokens per tile at most (rounded down to whole selection blocks, at least one)."""
WIN_TILE_KEYS = 64
"""Window rows per tile (a power of two >= 16)."""
MERGE_ROWS = 32
"""Partials a merge folds per step (one step covers every split at batch >= 2 at 64k)."""
WARPS = 4
SELECT_ELEMENTS = 4096
"""Score elements (heads x blocks) the select kernel loads per step: the heads of a group are
walked SELECT_ELEMENTS // blocks at a time."""
SELECT_WIDE_ROW = 1024
"""Score rows of more (padded) blocks than this take SELECT_WIDE_WARPS."""
SELECT_WIDE_WARPS = 8
MAX_GROUP = 32
"""Largest G: the G query heads of a group are the rows of every tile."""


@dataclass(frozen=True)
class DecodeTiles:
    """How a decode step splits its work (defaults: the constants above)."""

    programs: int = SPLIT_PROGRAMS
    split_keys: int = SPLIT_KEYS
    cmp_tokens: int = CMP_TILE_TOKENS
    win_keys: int = WIN_TILE_KEYS
    merge_rows: int = MERGE_ROWS
    num_warps: int = WARPS
    fuse_select: bool = False
    """Every selected-branch program computes the block scores and top-n itself (the same for
    all of a row; the first one writes them) instead of one select launch before them."""


@triton.jit
def _length(LENGTHS, b, C):
    """S_b as int64, clamped to 1 .. C so that no row outside the storage is addressed."""
    return tl.maximum(tl.minimum(tl.load(LENGTHS + b).to(tl.int64), C), 1)


@triton.jit
def _n_cmp(S, L_CMP: tl.constexpr, D_CMP: tl.constexpr):
    """N_cmp(S): compressed tokens of a prefix of S raw tokens."""
    return tl.where(S >= L_CMP, (S - L_CMP) // D_CMP + 1, 0)


@triton.jit
def _group_q(Q, b, h, sq_b, sq_h, G, DK, GP: tl.constexpr, DKP: tl.constexpr):
    """The G query heads of kv head h: [GP, DKP], zero rows past G."""
    g = tl.arange(0, GP)
    ck = tl.arange(0, DKP)
    return tl.load(Q + b * sq_b + (h * G + g).to(tl.int64)[:, None] * sq_h + ck[None, :],
                   mask=(g < G)[:, None] & (ck[None, :] < DK), other=0.0)  # [GP, DKP]


@triton.jit
def _store_partial(PM, PD, PA, CNT, slot, m, den, acc, count, G, DV, GP: tl.constexpr,
                   DVP: tl.constexpr):
    """Partial `slot` of one (sequence, kv head): m, den [GP], acc [GP, DVP], rows read."""
    g = tl.arange(0, GP)
    cv = tl.arange(0, DVP)
    row = slot * G + g  # [GP]
    tl.store(PM + row, m, mask=g < G)
    tl.store(PD + row, den, mask=g < G)
    tl.store(PA + row.to(tl.int64)[:, None] * DV + cv[None, :], acc,
             mask=(g < G)[:, None] & (cv[None, :] < DV))
    tl.store(CNT + slot, count)


@triton.jit
def _cmp_tile(t, q, m, den, acc, seen, N, K, V, SP, SMAX, sk_n, sv_n, G, DK, DV, scale,
              L_CMP: tl.constexpr, D_CMP: tl.constexpr, L_SLC: tl.constexpr, TT: tl.constexpr,
              BJ: tl.constexpr, BN: tl.constexpr, BJP: tl.constexpr, GP: tl.constexpr,
              DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr, EXACT: tl.constexpr,
              INTERP: tl.constexpr):
    """Fold compressed tile t (tokens t*TT .. t*TT + TT - 1, those < N) into (m, den, acc) and
    store its block-score partials SP[t] [G, BJ + 1] and tile maxima SMAX[t] [G]."""
    r = tl.arange(0, BN)
    i = t * TT + r  # [BN] compressed token
    ok = (r < TT) & (i < N)
    i64 = i.to(tl.int64)
    ck = tl.arange(0, DKP)
    cv = tl.arange(0, DVP)
    k = tl.load(K + i64[:, None] * sk_n + ck[None, :], mask=ok[:, None] & (ck[None, :] < DK),
                other=0.0)  # [BN, DKP]
    v = tl.load(V + i64[:, None] * sv_n + cv[None, :], mask=ok[:, None] & (cv[None, :] < DV),
                other=0.0)  # [BN, DVP]
    s = tl.where(ok[None, :], dot(q, tl.trans(k), PREC, INTERP) * scale, float("-inf"))  # [GP, BN]
    mt = tl.max(s, 1)  # [GP], finite: a stored tile holds at least one token
    p = tl.exp(s - mt[:, None])  # [GP, BN]
    jj = tl.arange(0, BJP)
    j = t * BJ + jj  # [BJP] the tile's blocks, then its right neighbour
    lo = tl.maximum(i[:, None] * D_CMP, j[None, :] * L_SLC)
    hi = tl.minimum(i[:, None] * D_CMP + L_CMP, (j[None, :] + 1) * L_SLC)
    w = tl.where(ok[:, None] & (jj[None, :] <= BJ), tl.maximum(hi - lo, 0).to(tl.float32) / D_CMP,
                 0.0)  # [BN, BJP] Eq. 9's overlap weights
    part = dot(p, w, EXACT, INTERP)  # [GP, BJP]
    g = tl.arange(0, GP)
    row = t.to(tl.int64) * G + g  # [GP]
    tl.store(SP + row[:, None] * (BJ + 1) + jj[None, :], part, mask=(g < G)[:, None] & (jj[None, :] <= BJ))
    tl.store(SMAX + row, mt, mask=g < G)
    m_new = tl.maximum(m, mt)
    alpha = tl.exp(m - m_new)  # [GP]
    beta = tl.exp(mt - m_new)  # [GP]
    den = den * alpha + beta * tl.sum(p, 1)
    acc = acc * alpha[:, None] + beta[:, None] * dot(p.to(v.dtype), v, PREC, INTERP)  # [GP, DVP]
    return m_new, den, acc, seen + ok.to(tl.int32)


@triton.jit
def _cmp_split(split, q, S, K, V, SP, SMAX, sk_n, sv_n, G, DK, DV, scale, P_CMP,
               L_CMP: tl.constexpr, D_CMP: tl.constexpr, L_SLC: tl.constexpr, TT: tl.constexpr,
               BJ: tl.constexpr, BN: tl.constexpr, BJP: tl.constexpr, GP: tl.constexpr,
               DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr, EXACT: tl.constexpr,
               INTERP: tl.constexpr):
    """Split `split` of P_CMP over the compressed tiles of a sequence of S tokens."""
    N = _n_cmp(S, L_CMP, D_CMP)
    n_tiles = tl.cdiv(N, TT)
    per = tl.cdiv(n_tiles, P_CMP)
    t_lo = split * per
    t_hi = tl.minimum(t_lo + per, n_tiles)
    m = tl.full([GP], float("-inf"), tl.float32)
    den = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, DVP], tl.float32)
    seen = tl.zeros([BN], tl.int32)
    if INTERP:
        t = t_lo
        while t < t_hi:
            m, den, acc, seen = _cmp_tile(t, q, m, den, acc, seen, N, K, V, SP, SMAX, sk_n, sv_n, G, DK,
                                          DV, scale, L_CMP, D_CMP, L_SLC, TT, BJ, BN, BJP, GP, DKP, DVP,
                                          PREC, EXACT, INTERP)
            t += 1
    else:
        for t in range(t_lo, t_hi):
            m, den, acc, seen = _cmp_tile(t, q, m, den, acc, seen, N, K, V, SP, SMAX, sk_n, sv_n, G, DK,
                                          DV, scale, L_CMP, D_CMP, L_SLC, TT, BJ, BN, BJP, GP, DKP, DVP,
                                          PREC, EXACT, INTERP)
    return m, den, acc, tl.sum(seen, 0)


@triton.jit
def _win_tile(k0, first, q, m, den, acc, seen, S, K, V, sk_r, sv_r, W, DK, DV, scale, BW: tl.constexpr,
              DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr):
    pos = first + k0 + tl.arange(0, BW)  # [BW] int64
    ok = pos < S
    row = pos % W
    ck = tl.arange(0, DKP)
    cv = tl.arange(0, DVP)
    k = tl.load(K + row[:, None] * sk_r + ck[None, :], mask=ok[:, None] & (ck[None, :] < DK),
                other=0.0)  # [BW, DKP]
    v = tl.load(V + row[:, None] * sv_r + cv[None, :], mask=ok[:, None] & (cv[None, :] < DV),
                other=0.0)  # [BW, DVP]
    m, den, acc = online_step(q, k, v, ok[None, :], m, den, acc, scale, PREC, INTERP)
    return m, den, acc, seen + ok.to(tl.int32)


@triton.jit
def _win_split(split, q, S, K, V, sk_r, sv_r, W, DK, DV, scale, WCH, BW: tl.constexpr, GP: tl.constexpr,
               DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr):
    """Window positions lo + split*WCH .. lo + split*WCH + WCH - 1 (those < S), lo = max(0, S - W),
    read from ring rows p % W."""
    first = tl.maximum(S - W, 0) + split * WCH
    m = tl.full([GP], float("-inf"), tl.float32)
    den = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, DVP], tl.float32)
    seen = tl.zeros([BW], tl.int32)
    if INTERP:
        k0 = 0
        while k0 < WCH:
            m, den, acc, seen = _win_tile(k0, first, q, m, den, acc, seen, S, K, V, sk_r, sv_r, W, DK, DV,
                                          scale, BW, DKP, DVP, PREC, INTERP)
            k0 += BW
    else:
        for k0 in range(0, WCH, BW):
            m, den, acc, seen = _win_tile(k0, first, q, m, den, acc, seen, S, K, V, sk_r, sv_r, W, DK, DV,
                                          scale, BW, DKP, DVP, PREC, INTERP)
    return m, den, acc, tl.sum(seen, 0)


@triton.jit
def _split_cmp_win(Q, K_CMP, V_CMP, K_WIN, V_WIN, LENGTHS, PM, PD, PA, CNT, SP, SMAX, sq_b, sq_h,
                   skc_b, skc_n, skc_h, svc_b, svc_n, svc_h, skw_b, skw_r, skw_h, svw_b, svw_r, svw_h,
                   H, G, DK, DV, C, W, TILES, scale, P_CMP, P_ALL, WCH, L_CMP: tl.constexpr,
                   D_CMP: tl.constexpr, L_SLC: tl.constexpr, TT: tl.constexpr, BJ: tl.constexpr,
                   BN: tl.constexpr, BJP: tl.constexpr, BW: tl.constexpr, GP: tl.constexpr,
                   DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr, EXACT: tl.constexpr,
                   INTERP: tl.constexpr):
    tl.static_assert((BN >= 16) & (BW >= 16) & (BJP >= 16) & (GP >= 16), "tl.dot needs 16 rows and keys")
    tl.static_assert(BN >= TT, "a compressed tile holds TT tokens")
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    S = _length(LENGTHS, b, C)
    q = _group_q(Q, b, h, sq_b, sq_h, G, DK, GP, DKP)
    if pid < P_CMP:
        m, den, acc, count = _cmp_split(
            pid, q, S, K_CMP + b * skc_b + h * skc_h, V_CMP + b * svc_b + h * svc_h,
            SP + bh * TILES * G * (BJ + 1), SMAX + bh * TILES * G, skc_n, svc_n, G, DK, DV, scale, P_CMP,
            L_CMP, D_CMP, L_SLC, TT, BJ, BN, BJP, GP, DKP, DVP, PREC, EXACT, INTERP)
    else:
        m, den, acc, count = _win_split(
            pid - P_CMP, q, S, K_WIN + b * skw_b + h * skw_h, V_WIN + b * svw_b + h * svw_h, skw_r, svw_r,
            W, DK, DV, scale, WCH, BW, GP, DKP, DVP, PREC, INTERP)
    _store_partial(PM + bh * P_ALL * G, PD + bh * P_ALL * G, PA + bh * P_ALL * G * DV, CNT + bh * P_ALL,
                   pid, m, den, acc, count, G, DV, GP, DVP)


@triton.jit
def _scores(bh, S, PM, PD, SP, SMAX, TILES, P_CMP, P_ALL, G: tl.constexpr, GC: tl.constexpr,
            PCP: tl.constexpr, L_CMP: tl.constexpr, D_CMP: tl.constexpr, L_SLC: tl.constexpr,
            TT: tl.constexpr, BJ: tl.constexpr, NBP: tl.constexpr):
    """Block scores [NBP] of (sequence, kv head) bh from the compressed partials (Eqs. 8-10)."""
    n_tiles = tl.cdiv(_n_cmp(S, L_CMP, D_CMP), TT)
    c = (S - 1) // L_SLC
    j = tl.arange(0, NBP)
    t = (j // BJ).to(tl.int64)[None, :]  # [1, NBP] the tile holding block j's own tokens
    jj = (j % BJ)[None, :]
    own = (j <= c)[None, :] & (t < n_tiles)
    spill = (j <= c)[None, :] & (jj == 0) & (t >= 1) & (t - 1 < n_tiles)  # the left tile's last token
    sp = SP + bh * TILES * G * (BJ + 1)
    smax = SMAX + bh * TILES * G
    split = tl.arange(0, PCP)[None, :]
    parts = PM + bh * P_ALL * G + split * G
    dens = PD + bh * P_ALL * G + split * G
    score = tl.zeros([NBP], tl.float32)
    for g0 in tl.static_range(0, G, GC):  # unrolled: every chunk's loads issue at once
        g = g0 + tl.arange(0, GC)[:, None]  # [GC, 1] GC heads at a time
        g_ok = g < G
        pm = tl.load(parts + g, mask=g_ok & (split < P_CMP), other=float("-inf"))  # [GC, PCP]
        pd = tl.load(dens + g, mask=g_ok & (split < P_CMP), other=0.0)  # [GC, PCP]
        m_g = tl.max(pm, 1)  # [GC]
        base = tl.where(m_g == float("-inf"), 0.0, m_g)[:, None]  # [GC, 1]
        den_g = tl.sum(pd * tl.exp(pm - base), 1)  # [GC]
        main = tl.load(sp + (t * G + g) * (BJ + 1) + jj, mask=own & g_ok, other=0.0)  # [GC, NBP]
        m_main = tl.load(smax + t * G + g, mask=own & g_ok, other=float("-inf"))  # [GC, NBP]
        left = tl.load(sp + ((t - 1) * G + g) * (BJ + 1) + BJ, mask=spill & g_ok, other=0.0)  # [GC, NBP]
        m_left = tl.load(smax + (t - 1) * G + g, mask=spill & g_ok, other=float("-inf"))  # [GC, NBP]
        part = main * tl.exp(m_main - base) + left * tl.exp(m_left - base)  # [GC, NBP]
        score += tl.sum(part / tl.where(den_g > 0, den_g, 1.0)[:, None], 0)
    return score, j, c


@triton.jit
def _select(LENGTHS, PM, PD, SP, SMAX, IDX, si_b, si_h, H, C, TILES, P_CMP, P_ALL, G: tl.constexpr,
            GC: tl.constexpr, PCP: tl.constexpr, L_CMP: tl.constexpr, D_CMP: tl.constexpr,
            L_SLC: tl.constexpr, TT: tl.constexpr, BJ: tl.constexpr, NBP: tl.constexpr,
            N_SEL: tl.constexpr, NP: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    S = _length(LENGTHS, b, C)
    score, j, c = _scores(bh, S, PM, PD, SP, SMAX, TILES, P_CMP, P_ALL, G, GC, PCP, L_CMP, D_CMP, L_SLC,
                          TT, BJ, NBP)
    top_n_row(score, j, c, IDX + b * si_b + h * si_h, N_SEL, NP)


@triton.jit
def _slc_block(blk, q, m, den, acc, seen, S, K, V, sk_t, sv_t, DK, DV, scale, L_SLC: tl.constexpr,
               BL: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr,
               INTERP: tl.constexpr):
    """Fold the rows < S of selected block `blk` (-1: none) into (m, den, acc)."""
    ck = tl.arange(0, DKP)
    cv = tl.arange(0, DVP)
    offs = tl.arange(0, BL)
    pos = blk.to(tl.int64) * L_SLC + offs  # [BL]
    ok = (blk >= 0) & (offs < L_SLC) & (pos < S)
    k = tl.load(K + pos[:, None] * sk_t + ck[None, :], mask=ok[:, None] & (ck[None, :] < DK),
                other=0.0)  # [BL, DKP]
    v = tl.load(V + pos[:, None] * sv_t + cv[None, :], mask=ok[:, None] & (cv[None, :] < DV),
                other=0.0)  # [BL, DVP]
    m, den, acc = online_step(q, k, v, ok[None, :], m, den, acc, scale, PREC, INTERP)
    return m, den, acc, seen + ok.to(tl.int32)


@triton.jit
def _slot_block(slot, IDX, taken, rank, j, N_SEL: tl.constexpr, FUSED: tl.constexpr):
    """The block in selection slot `slot` (-1 if none): from the picks in registers when FUSED,
    else from IDX."""
    if FUSED:
        hit = (taken > 0) & (rank == slot)  # [NBP]
        return tl.where(tl.sum(hit.to(tl.int32), 0) > 0, tl.sum(tl.where(hit, j, 0), 0), -1)
    return tl.load(IDX + slot, mask=slot < N_SEL, other=-1)


@triton.jit
def _split_slc(Q, K, V, LENGTHS, IDX, PM, PD, PA, CNT, SP, SMAX, sq_b, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t,
               sv_h, si_b, si_h, H, G, DK, DV, C, TILES, scale, P_CMP, P_FIRST, P_ALL, SPP,
               GROUP: tl.constexpr, GC: tl.constexpr, PCP: tl.constexpr, L_CMP: tl.constexpr,
               D_CMP: tl.constexpr, TT: tl.constexpr, BJ: tl.constexpr, NBP: tl.constexpr,
               NP: tl.constexpr, N_SEL: tl.constexpr, L_SLC: tl.constexpr, BL: tl.constexpr,
               GP: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr,
               FUSED: tl.constexpr, INTERP: tl.constexpr):
    tl.static_assert((BL >= 16) & (GP >= 16), "tl.dot needs 16 rows and keys")
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    S = _length(LENGTHS, b, C)
    IDX += b * si_b + h * si_h
    if FUSED:  # every program of the row selects (the same blocks); the first one writes them
        score, j, c = _scores(bh, S, PM, PD, SP, SMAX, TILES, P_CMP, P_ALL, GROUP, GC, PCP, L_CMP, D_CMP,
                              L_SLC, TT, BJ, NBP)
        taken = top_n_pick(score, j, c, N_SEL)  # [NBP]
        rank = tl.cumsum(taken, 0) - 1  # [NBP]
        tl.store(IDX + rank, j, mask=(taken > 0) & (pid == 0))
        slot = tl.arange(0, NP)
        tl.store(IDX + slot, tl.full([NP], -1, tl.int32),
                 mask=(slot >= tl.minimum(c + 1, N_SEL)) & (slot < N_SEL) & (pid == 0))
    else:
        j = tl.arange(0, NBP)
        taken = tl.zeros_like(j)
        rank = taken
    q = _group_q(Q, b, h, sq_b, sq_h, G, DK, GP, DKP)
    K += b * sk_b + h * sk_h
    V += b * sv_b + h * sv_h
    m = tl.full([GP], float("-inf"), tl.float32)
    den = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, DVP], tl.float32)
    seen = tl.zeros([BL], tl.int32)
    if INTERP:
        slot = pid * SPP
        while slot < pid * SPP + SPP:
            blk = _slot_block(slot, IDX, taken, rank, j, N_SEL, FUSED)
            m, den, acc, seen = _slc_block(blk, q, m, den, acc, seen, S, K, V, sk_t, sv_t, DK, DV, scale,
                                           L_SLC, BL, DKP, DVP, PREC, INTERP)
            slot += 1
    else:
        for slot in range(pid * SPP, pid * SPP + SPP):
            blk = _slot_block(slot, IDX, taken, rank, j, N_SEL, FUSED)
            m, den, acc, seen = _slc_block(blk, q, m, den, acc, seen, S, K, V, sk_t, sv_t, DK, DV, scale,
                                           L_SLC, BL, DKP, DVP, PREC, INTERP)
    _store_partial(PM + bh * P_ALL * G, PD + bh * P_ALL * G, PA + bh * P_ALL * G * DV, CNT + bh * P_ALL,
                   P_FIRST + pid, m, den, acc, tl.sum(seen, 0), G, DV, GP, DVP)


@triton.jit
def _merge_fold(s0, m, den, acc, PM, PD, PA, g, G, DV, HI, MC: tl.constexpr, DVP: tl.constexpr):
    """Fold partials s0 .. s0 + MC - 1 (those < HI) of head g into (m [1], den [1], acc [1, DVP])."""
    s = s0 + tl.arange(0, MC)  # [MC]
    cv = tl.arange(0, DVP)
    pm = tl.load(PM + s * G + g, mask=s < HI, other=float("-inf"))  # [MC]
    pd = tl.load(PD + s * G + g, mask=s < HI, other=0.0)  # [MC]
    part = tl.load(PA + (s.to(tl.int64) * G + g)[:, None] * DV + cv[None, :],
                   mask=(s < HI)[:, None] & (cv[None, :] < DV), other=0.0)  # [MC, DVP]
    m_new = tl.maximum(m, tl.max(pm, 0, keep_dims=True))  # [1]
    base = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m - base)  # [1]
    weight = tl.exp(pm - base)  # [MC]
    den = den * alpha + tl.sum(weight * pd, 0, keep_dims=True)
    acc = acc * alpha[:, None] + tl.sum(weight[:, None] * part, 0, keep_dims=True)
    return m_new, den, acc


@triton.jit
def _merge(PM, PD, PA, g, G, DV, LO, HI, MC: tl.constexpr, DVP: tl.constexpr, INTERP: tl.constexpr):
    """Partials LO .. HI - 1 of head g, folded in order (one pass) -> (o [1, DVP], lse [1])."""
    m = tl.full([1], float("-inf"), tl.float32)
    den = tl.zeros([1], tl.float32)
    acc = tl.zeros([1, DVP], tl.float32)
    if INTERP:
        s0 = LO
        while s0 < HI:
            m, den, acc = _merge_fold(s0, m, den, acc, PM, PD, PA, g, G, DV, HI, MC, DVP)
            s0 += MC
    else:
        for s0 in range(LO, HI, MC):
            m, den, acc = _merge_fold(s0, m, den, acc, PM, PD, PA, g, G, DV, HI, MC, DVP)
    return finish(m, den, acc)


@triton.jit
def _merge_combine(PM, PD, PA, CNT, GATES, O, LSE, READS, sg_b, sg_h, sg_c, so_b, so_h, sl_b, sl_h,
                   sl_c, sr_b, H, G, DV, P_CMP, P_WIN, P_ALL, PAP: tl.constexpr, MC: tl.constexpr,
                   DVP: tl.constexpr, INTERP: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    b = bh // H
    h = bh % H
    PM += bh * P_ALL * G
    PD += bh * P_ALL * G
    PA += bh * P_ALL * G * DV
    o_cmp, lse_cmp = _merge(PM, PD, PA, g, G, DV, 0, P_CMP, MC, DVP, INTERP)
    o_win, lse_win = _merge(PM, PD, PA, g, G, DV, P_CMP, P_CMP + P_WIN, MC, DVP, INTERP)
    o_slc, lse_slc = _merge(PM, PD, PA, g, G, DV, P_CMP + P_WIN, P_ALL, MC, DVP, INTERP)
    hq = (h * G + g).to(tl.int64)
    gate = GATES + b * sg_b + hq * sg_h
    g_cmp = tl.load(gate).to(tl.float32)
    g_slc = tl.load(gate + sg_c).to(tl.float32)
    g_win = tl.load(gate + 2 * sg_c).to(tl.float32)
    o = g_cmp * o_cmp + g_slc * o_slc + g_win * o_win  # [1, DVP]
    cv = tl.arange(0, DVP)
    tl.store(O + b * so_b + hq * so_h + cv[None, :], o.to(O.dtype.element_ty), mask=cv[None, :] < DV)
    lse = LSE + b * sl_b + hq * sl_h + tl.zeros([1], tl.int64)  # [1]
    tl.store(lse, lse_cmp)
    tl.store(lse + sl_c, lse_slc)
    tl.store(lse + 2 * sl_c, lse_win)
    split = tl.arange(0, PAP)
    rows = tl.sum(tl.load(CNT + bh * P_ALL + split, mask=split < P_ALL, other=0).to(tl.int64), 0)
    tl.store(READS + b * sr_b + h, rows, mask=g == 0)


def _check(name: str, x: Tensor, shape: tuple[int, ...], rule: str) -> None:
    if tuple(x.shape) != shape:
        raise InvalidInputError(
            f"{name} must have shape {list(shape)} ({rule}): {name}.shape={tuple(x.shape)}"
        )


def _validate(q: Tensor, gates: Tensor, k_cmp: Tensor, v_cmp: Tensor, k_slc: Tensor, v_slc: Tensor,
              k_win: Tensor, v_win: Tensor, lengths: Tensor, config: NSAConfig) -> None:
    """Shape, dtype and layout rules of the decode step (the lengths' values are not checked: that
    would synchronise with the host)."""
    if q.dim() != 3 or k_slc.dim() != 4:
        raise InvalidInputError(
            f"q must be [B, HQ, dk] and k_slc [B, C, H, dk]: q.shape={tuple(q.shape)}, "
            f"k_slc.shape={tuple(k_slc.shape)}"
        )
    B, HQ, dk = q.shape
    _, C, H, _ = k_slc.shape
    if HQ % H:
        raise InvalidInputError(f"key/value heads H must divide query heads HQ (GQA): HQ={HQ}, H={H}")
    dv = v_slc.shape[-1]
    cap = n_cmp(C, config)
    _check("k_slc", k_slc, (B, C, H, dk), "[B, C, H, dk] like q")
    _check("v_slc", v_slc, (B, C, H, dv), "[B, C, H, dv]")
    if k_cmp.dim() != 4 or k_cmp.shape[1] < cap:
        raise InvalidInputError(
            f"k_cmp must be [B, C_cmp, H, dk] with C_cmp >= N_cmp(C) = {cap} (C = {C}, the slc "
            f"capacity): k_cmp.shape={tuple(k_cmp.shape)}"
        )
    c_cmp = k_cmp.shape[1]
    _check("k_cmp", k_cmp, (B, c_cmp, H, dk), "[B, C_cmp, H, dk]")
    _check("v_cmp", v_cmp, (B, c_cmp, H, dv), "[B, C_cmp, H, dv] like k_cmp")
    w = config.window
    _check("k_win", k_win, (B, w, H, dk), "[B, w, H, dk], the window ring")
    _check("v_win", v_win, (B, w, H, dv), "[B, w, H, dv], the window ring")
    _check("gates", gates, (B, HQ, 3), "[B, HQ, 3]")
    _check("lengths", lengths, (B,), "[B]")
    if lengths.dtype != torch.int64 or lengths.device != q.device:
        raise InvalidInputError(
            f"lengths must be int64 on q's device {q.device}: lengths is {lengths.dtype} on {lengths.device}"
        )
    for name, x in (("k_cmp", k_cmp), ("v_cmp", v_cmp), ("k_slc", k_slc), ("v_slc", v_slc),
                    ("k_win", k_win), ("v_win", v_win)):
        if x.dtype != q.dtype or x.device != q.device:
            raise InvalidInputError(
                f"{name} must have q's dtype {q.dtype} and device {q.device}: {name} is {x.dtype} "
                f"on {x.device}"
            )
        if x.stride(-1) != 1:
            raise InvalidInputError(
                f"{name} must have unit stride in its last dim: {name}.stride()={x.stride()}"
            )
    if HQ // H > MAX_GROUP:
        raise UnsupportedError(
            f"the triton decode step holds a group in one tile: G=HQ/H={HQ // H} > {MAX_GROUP}"
        )
    blocks = triton.cdiv(C, config.slc_len)
    if blocks > TOP_N_MAX_BLOCKS:
        raise UnsupportedError(
            f"the triton decode step holds a sequence's block scores in one program: capacity C={C} makes "
            f"{blocks} selection blocks of l'={config.slc_len}, at most {TOP_N_MAX_BLOCKS} supported"
        )


def _rows_per_split(total: int, fill: int, tiles: DecodeTiles) -> int:
    """Key rows per program when `fill` programs share `total` rows, at least `tiles.split_keys`."""
    return max(tiles.split_keys, triton.cdiv(total, fill))


def decode_attention(q: Tensor, gates: Tensor, k_cmp: Tensor, v_cmp: Tensor, k_slc: Tensor, v_slc: Tensor,
                     k_win: Tensor, v_win: Tensor, lengths: Tensor, config: NSAConfig, scale: float,
                     tiles: DecodeTiles | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One decode step of B sequences on the cache layout v2 (module docstring).

    q [B, HQ, dk], gates [B, HQ, 3] (activated); k_cmp/v_cmp [B, C_cmp, H, dk|dv]; k_slc/v_slc
    [B, C, H, dk|dv]; k_win/v_win [B, w, H, dk|dv] (ring: position p in row p % w); lengths [B]
    int64 on the device, each in 1..C (clamped to it, not checked). Returns o [B, HQ, dv] in q's
    dtype, lse [B, HQ, 3] float32 (cmp, slc, win), indices [B, H, n] int32 (ascending, -1 padded)
    and reads [B, H] int64, the rows the step loaded.
    """
    _validate(q, gates, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, lengths, config)
    tiles = tiles or DecodeTiles()
    q = q if q.stride(-1) == 1 else q.contiguous()
    B, HQ, dk = q.shape
    C, H, dv = k_slc.shape[1], k_slc.shape[2], v_slc.shape[3]
    G, c_cmp, w, n, l_slc = HQ // H, k_cmp.shape[1], config.window, config.top_n, config.slc_len
    dev = q.device
    fill = triton.cdiv(tiles.programs, B * H)
    per_block = l_slc // config.cmp_stride
    bj = max(1, tiles.cmp_tokens // per_block)  # blocks per compressed tile
    tt = bj * per_block
    n_tiles = max(1, triton.cdiv(c_cmp, tt))
    per = _rows_per_split(c_cmp + w, fill, tiles)  # the first launch shares cmp and window rows
    p_cmp = max(1, min(triton.cdiv(c_cmp, per), n_tiles))
    bw = tiles.win_keys
    wch = triton.cdiv(triton.cdiv(w, triton.cdiv(w, per)), bw) * bw  # window positions per split
    p_win = triton.cdiv(w, wch)
    spp = triton.cdiv(n, triton.cdiv(l_slc * n, _rows_per_split(l_slc * n, fill, tiles)))  # blocks per split
    p_slc = triton.cdiv(n, spp)
    p_all = p_cmp + p_win + p_slc
    gp, dkp, dvp = padded(G), padded(dk), padded(dv)
    prec, interp = dot_precision(q.dtype), interpreted()
    f32 = dict(dtype=torch.float32, device=dev)
    pm = torch.empty((B * H, p_all, G), **f32)
    pd = torch.empty((B * H, p_all, G), **f32)
    pa = torch.empty((B * H, p_all, G, dv), **f32)
    cnt = torch.empty((B * H, p_all), dtype=torch.int32, device=dev)
    sp = torch.empty((B * H, n_tiles, G, bj + 1), **f32)
    smax = torch.empty((B * H, n_tiles, G), **f32)
    indices = torch.empty((B, H, n), dtype=torch.int32, device=dev)
    o = torch.empty((B, HQ, dv), dtype=q.dtype, device=dev)
    lse = torch.empty((B, HQ, 3), **f32)
    reads = torch.empty((B, H), dtype=torch.int64, device=dev)
    blocks = dict(L_CMP=config.cmp_len, D_CMP=config.cmp_stride, L_SLC=l_slc, TT=tt, BJ=bj)
    _split_cmp_win[(p_cmp + p_win, B * H)](
        q, k_cmp, v_cmp, k_win, v_win, lengths, pm, pd, pa, cnt, sp, smax, q.stride(0), q.stride(1),
        k_cmp.stride(0), k_cmp.stride(1), k_cmp.stride(2), v_cmp.stride(0), v_cmp.stride(1), v_cmp.stride(2),
        k_win.stride(0), k_win.stride(1), k_win.stride(2), v_win.stride(0), v_win.stride(1), v_win.stride(2),
        H, G, dk, dv, C, w, n_tiles, scale, p_cmp, p_all, wch, BN=padded(tt), BJP=padded(bj + 1), BW=bw,
        GP=gp, DKP=dkp, DVP=dvp, PREC=prec, EXACT="ieee", INTERP=interp,
        num_warps=tiles.num_warps, **blocks,
    )
    nbp = triton.next_power_of_2(triton.cdiv(C, l_slc))
    select = dict(GC=min(triton.next_power_of_2(G), max(1, SELECT_ELEMENTS // nbp)),
                  PCP=triton.next_power_of_2(p_cmp), NBP=nbp, N_SEL=n, NP=triton.next_power_of_2(n),
                  **blocks)
    if not tiles.fuse_select:
        _select[(B * H,)](
            lengths, pm, pd, sp, smax, indices, indices.stride(0), indices.stride(1), H, C, n_tiles, p_cmp,
            p_all, G=G, num_warps=WARPS if nbp <= SELECT_WIDE_ROW else SELECT_WIDE_WARPS, **select,
        )
    _split_slc[(p_slc, B * H)](
        q, k_slc, v_slc, lengths, indices, pm, pd, pa, cnt, sp, smax, q.stride(0), q.stride(1),
        k_slc.stride(0), k_slc.stride(1), k_slc.stride(2), v_slc.stride(0), v_slc.stride(1), v_slc.stride(2),
        indices.stride(0), indices.stride(1), H, G, dk, dv, C, n_tiles, scale, p_cmp, p_cmp + p_win, p_all,
        spp, GROUP=G, BL=padded(l_slc), GP=gp, DKP=dkp, DVP=dvp, PREC=prec, FUSED=tiles.fuse_select,
        INTERP=interp, num_warps=tiles.num_warps, **select,
    )
    _merge_combine[(B * H, G)](
        pm, pd, pa, cnt, gates, o, lse, reads, gates.stride(0), gates.stride(1), gates.stride(2),
        o.stride(0), o.stride(1), lse.stride(0), lse.stride(1), lse.stride(2), reads.stride(0), H, G, dv,
        p_cmp, p_win, p_all, PAP=triton.next_power_of_2(p_all), MC=tiles.merge_rows, DVP=dvp, INTERP=interp,
        num_warps=WARPS,
    )
    return o, lse, indices, reads
