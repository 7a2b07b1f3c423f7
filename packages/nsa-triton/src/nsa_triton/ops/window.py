"""The sliding-window branch fused with the gated combine (Eq. 5).

A flash-style causal band: one program takes a tile of tokens times the G query heads of one kv
head (GQA by mapping query heads to their kv head) and visits only the keys in
[t_first - w + 1, t_last]. It then mixes its own output with the compressed and selected branch
outputs (float32, written earlier into `branch_o`) under the gates, stores its own output beside
them (the backward's gate gradient reads all three) and writes the final o in q's dtype.

Backward (`nsa_triton.ops.attention_grad` has the step; the combine's own backward is
`nsa_triton.ops.combine`): one program per key tile [s0, s0 + BN) walks the row tiles of tokens
s0 .. s0 + BN + w - 2 and writes that tile's dK/dV; one program per row tile walks the band and
adds its dQ.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
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
from nsa_triton.ops.compress import _rows
from nsa_triton.ops.online import dot, finish, interpreted, online_step
from nsa_triton.ops.tiles import dot_precision, first_fit, group_tile, padded, staged_plans


@triton.jit
def _win_tile(s0, q, t, row_ok, m, den, acc, K, V, sk_t, sv_t, hi, W, DK, DV, scale, BN: tl.constexpr,
              DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr):
    s_pos = s0 + tl.arange(0, BN)
    ck = tl.arange(0, DKP)
    cv = tl.arange(0, DVP)
    key_ok = s_pos < hi
    rows = s_pos.to(tl.int64)[:, None]
    k = tl.load(K + rows * sk_t + ck[None, :], mask=key_ok[:, None] & (ck[None, :] < DK), other=0.0)
    v = tl.load(V + rows * sv_t + cv[None, :], mask=key_ok[:, None] & (cv[None, :] < DV), other=0.0)
    band = (s_pos[None, :] <= t[:, None]) & (s_pos[None, :] > t[:, None] - W) & key_ok[None, :]
    return online_step(q, k, v, band & row_ok[:, None], m, den, acc, scale, PREC, INTERP)


@triton.jit
def _win_fwd(Q, K, V, GATES, BRANCH_O, O, LSE, sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t,
             sv_h, sg_b, sg_t, sg_h, sb_b, sb_t, sb_h, sb_c, so_b, so_t, so_h, sl_b, sl_t, sl_h,
             T, H, G, DK, DV, scale, W, BT: tl.constexpr, GP: tl.constexpr, BN: tl.constexpr,
             DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr):
    pid_t = tl.program_id(0)
    b = (tl.program_id(1) // H).to(tl.int64)
    h = tl.program_id(1) % H
    t, g, row_ok = _rows(pid_t, T, G, BT, GP)
    t64 = t.to(tl.int64)
    hq = h * G + g
    ck = tl.arange(0, DKP)
    cv = tl.arange(0, DVP)
    q = tl.load(Q + b * sq_b + t64[:, None] * sq_t + hq[:, None] * sq_h + ck[None, :],
                mask=row_ok[:, None] & (ck[None, :] < DK), other=0.0)
    m = tl.full([BT * GP], float("-inf"), tl.float32)
    den = tl.zeros([BT * GP], tl.float32)
    acc = tl.zeros([BT * GP, DVP], tl.float32)
    lo = tl.maximum(pid_t * BT - W + 1, 0)
    hi = tl.minimum(pid_t * BT + BT, T)
    K += b * sk_b + h * sk_h
    V += b * sv_b + h * sv_h
    if INTERP:
        s0 = lo
        while s0 < hi:
            m, den, acc = _win_tile(s0, q, t, row_ok, m, den, acc, K, V, sk_t, sv_t, hi, W, DK, DV,
                                    scale, BN, DKP, DVP, PREC, INTERP)
            s0 += BN
    else:
        for s0 in range(lo, hi, BN):
            m, den, acc = _win_tile(s0, q, t, row_ok, m, den, acc, K, V, sk_t, sv_t, hi, W, DK, DV,
                                    scale, BN, DKP, DVP, PREC, INTERP)
    o_win, lse = finish(m, den, acc)
    tl.store(LSE + b * sl_b + t64 * sl_t + hq * sl_h, lse, mask=row_ok)
    gate = GATES + b * sg_b + t64 * sg_t + hq * sg_h
    g_cmp = tl.load(gate, mask=row_ok, other=0.0).to(tl.float32)
    g_slc = tl.load(gate + 1, mask=row_ok, other=0.0).to(tl.float32)
    g_win = tl.load(gate + 2, mask=row_ok, other=0.0).to(tl.float32)
    out_ok = row_ok[:, None] & (cv[None, :] < DV)
    branch = (b * sb_b + t64 * sb_t + hq * sb_h)[:, None] + cv[None, :]
    o_cmp = tl.load(BRANCH_O + branch, mask=out_ok, other=0.0)  # [BT * GP, DVP]
    o_slc = tl.load(BRANCH_O + sb_c + branch, mask=out_ok, other=0.0)  # [BT * GP, DVP]
    tl.store(BRANCH_O + 2 * sb_c + branch, o_win, mask=out_ok)
    o = g_cmp[:, None] * o_cmp + g_slc[:, None] * o_slc + g_win[:, None] * o_win
    tl.store(O + b * so_b + t64[:, None] * so_t + hq[:, None] * so_h + cv[None, :],
             o.to(O.dtype.element_ty), mask=out_ok)


def window_attention(q: Tensor, k_win: Tensor, v_win: Tensor, gates: Tensor, branch_o: Tensor,
                     o: Tensor, lse: Tensor, config: NSAConfig, scale: float, rows: int = 64,
                     bn: int = 64, num_warps: int = 4) -> None:
    """Write the window branch's lse [B, T, HQ] (a float32 view), its output into
    branch_o[..., 2, :] and the gated o [B, T, HQ, dv].

    branch_o is float32 [B, T, HQ, 3, dv] holding the compressed and selected branch outputs at
    [..., 0, :] and [..., 1, :]; gates [B, T, HQ, 3] hold gate values (already activated), as in
    the kernel contract.
    """
    B, T, HQ, dk = q.shape
    H, dv = k_win.shape[2], v_win.shape[3]
    bt, gp = group_tile(HQ // H, rows)

    def launch(plan: tuple[int, int]) -> tuple[tuple, dict]:
        keys, stages = plan
        args = (q, k_win, v_win, gates, branch_o, o, lse, q.stride(0), q.stride(1), q.stride(2),
                k_win.stride(0), k_win.stride(1), k_win.stride(2), v_win.stride(0), v_win.stride(1),
                v_win.stride(2), gates.stride(0), gates.stride(1), gates.stride(2), branch_o.stride(0),
                branch_o.stride(1), branch_o.stride(2), branch_o.stride(3), o.stride(0), o.stride(1),
                o.stride(2), lse.stride(0), lse.stride(1), lse.stride(2), T, H, HQ // H, dk, dv, scale,
                config.window)
        return args, dict(BT=bt, GP=gp, BN=keys, DKP=padded(dk), DVP=padded(dv), PREC=dot_precision(q.dtype),
                          INTERP=interpreted(), num_warps=num_warps, num_stages=stages)

    args, kwargs = launch(first_fit(_win_fwd, staged_plans(bn), launch, q.device))
    _win_fwd[(triton.cdiv(T, bt), B * H)](*args, **kwargs)


@triton.jit
def _win_dkdv_rows(pid_t, k, v, s_pos, dk, dv, Q, DO, GATE, LSE, DELTA, sq_t, sq_h, so_t, so_h, sg_t,
                   sg_h, sl_t, sl_h, sd_t, sd_h, h, T, G, W, DK, DV, scale, BT: tl.constexpr,
                   GP: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr,
                   INTERP: tl.constexpr):
    t, g, row_ok = _rows(pid_t, T, G, BT, GP)
    q, do, gate, lse, delta = load_rows(Q, DO, GATE, LSE, DELTA, t, h * G + g, row_ok, sq_t, sq_h, so_t,
                                        so_h, sg_t, sg_h, sl_t, sl_h, sd_t, sd_h, DK, DV, DKP, DVP)
    band = (s_pos[:, None] <= t[None, :]) & (s_pos[:, None] > t[None, :] - W) & (s_pos[:, None] < T)
    pgt, dst = grad_step_keys(q, k, v, do, gate, lse, delta, band & row_ok[None, :], scale, PREC,
                              INTERP)  # [BN, BT * GP] x2
    dv += dot(pgt.to(do.dtype), do, PREC, INTERP)  # [BN, DVP]
    dk += dot(dst.to(q.dtype), q, PREC, INTERP)  # [BN, DKP]
    return dk, dv


@triton.jit
def _win_bwd_dkdv(Q, K, V, DO, GATE, LSE, DELTA, GK, GV, sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t,
                  sv_h, so_b, so_t, so_h, sg_b, sg_t, sg_h, sl_b, sl_t, sl_h, sd_b, sd_t, sd_h, sgk_b,
                  sgk_t, sgk_h, sgv_b, sgv_t, sgv_h, T, H, G, DK, DV, scale, W, BT: tl.constexpr,
                  GP: tl.constexpr, BN: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
                  PREC: tl.constexpr, INTERP: tl.constexpr):
    tl.static_assert((BT * GP >= DOT_MIN) & (BN >= DOT_MIN), "tl.dot needs 16 rows and keys")
    pid_s = tl.program_id(0)
    b = (tl.program_id(1) // H).to(tl.int64)
    h = tl.program_id(1) % H
    s_pos = pid_s * BN + tl.arange(0, BN)
    s64 = s_pos.to(tl.int64)
    ck = tl.arange(0, DKP)
    cv = tl.arange(0, DVP)
    k_ok = (s_pos[:, None] < T) & (ck[None, :] < DK)
    v_ok = (s_pos[:, None] < T) & (cv[None, :] < DV)
    k = tl.load(K + b * sk_b + h * sk_h + s64[:, None] * sk_t + ck[None, :], mask=k_ok,
                other=0.0)  # [BN, DKP]
    v = tl.load(V + b * sv_b + h * sv_h + s64[:, None] * sv_t + cv[None, :], mask=v_ok,
                other=0.0)  # [BN, DVP]
    dk = tl.zeros([BN, DKP], tl.float32)
    dv = tl.zeros([BN, DVP], tl.float32)
    Q += b * sq_b
    DO += b * so_b
    GATE += b * sg_b
    LSE += b * sl_b
    DELTA += b * sd_b
    tile_lo = pid_s * BN // BT
    tile_hi = tl.minimum(pid_s * BN + BN - 1 + W - 1, T - 1) // BT + 1
    if INTERP:
        pid_t = tile_lo
        while pid_t < tile_hi:
            dk, dv = _win_dkdv_rows(pid_t, k, v, s_pos, dk, dv, Q, DO, GATE, LSE, DELTA, sq_t, sq_h, so_t,
                                    so_h, sg_t, sg_h, sl_t, sl_h, sd_t, sd_h, h, T, G, W, DK, DV, scale, BT,
                                    GP, DKP, DVP, PREC, INTERP)
            pid_t += 1
    else:
        for pid_t in range(tile_lo, tile_hi):
            dk, dv = _win_dkdv_rows(pid_t, k, v, s_pos, dk, dv, Q, DO, GATE, LSE, DELTA, sq_t, sq_h, so_t,
                                    so_h, sg_t, sg_h, sl_t, sl_h, sd_t, sd_h, h, T, G, W, DK, DV, scale, BT,
                                    GP, DKP, DVP, PREC, INTERP)
    tl.store(GK + b * sgk_b + h * sgk_h + s64[:, None] * sgk_t + ck[None, :], dk * scale, mask=k_ok)
    tl.store(GV + b * sgv_b + h * sgv_h + s64[:, None] * sgv_t + cv[None, :], dv, mask=v_ok)


@triton.jit
def _win_dq_keys(s0, q, do, gate, lse, delta, t, row_ok, dq, K, V, sk_t, sv_t, hi, W, DK, DV, scale,
                 BN: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr,
                 INTERP: tl.constexpr):
    s_pos = s0 + tl.arange(0, BN)
    s64 = s_pos.to(tl.int64)
    ck = tl.arange(0, DKP)
    cv = tl.arange(0, DVP)
    key_ok = s_pos < hi
    k = tl.load(K + s64[:, None] * sk_t + ck[None, :], mask=key_ok[:, None] & (ck[None, :] < DK),
                other=0.0)  # [BN, DKP]
    v = tl.load(V + s64[:, None] * sv_t + cv[None, :], mask=key_ok[:, None] & (cv[None, :] < DV),
                other=0.0)  # [BN, DVP]
    band = (s_pos[None, :] <= t[:, None]) & (s_pos[None, :] > t[:, None] - W) & key_ok[None, :]
    _, ds = grad_step(q, k, v, do, gate, lse, delta, band & row_ok[:, None], scale, PREC,
                      INTERP)  # [BT * GP, BN]
    return dq + dot(ds.to(k.dtype), k, PREC, INTERP)  # [BT * GP, DKP]


@triton.jit
def _win_bwd_dq(Q, K, V, DO, GATE, LSE, DELTA, GQ, sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h,
                so_b, so_t, so_h, sg_b, sg_t, sg_h, sl_b, sl_t, sl_h, sd_b, sd_t, sd_h, sgq_b, sgq_t, sgq_h,
                T, H, G, DK, DV, scale, W, BT: tl.constexpr, GP: tl.constexpr, BN: tl.constexpr,
                DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr):
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
    lo = tl.maximum(pid_t * BT - W + 1, 0)
    hi = tl.minimum(pid_t * BT + BT, T)
    K += b * sk_b + h * sk_h
    V += b * sv_b + h * sv_h
    if INTERP:
        s0 = lo
        while s0 < hi:
            dq = _win_dq_keys(s0, q, do, gate, lse, delta, t, row_ok, dq, K, V, sk_t, sv_t, hi, W, DK, DV,
                              scale, BN, DKP, DVP, PREC, INTERP)
            s0 += BN
    else:
        for s0 in range(lo, hi, BN):
            dq = _win_dq_keys(s0, q, do, gate, lse, delta, t, row_ok, dq, K, V, sk_t, sv_t, hi, W, DK, DV,
                              scale, BN, DKP, DVP, PREC, INTERP)
    ck = tl.arange(0, DKP)
    out = GQ + b * sgq_b + t.to(tl.int64)[:, None] * sgq_t + hq[:, None] * sgq_h + ck[None, :]
    out_ok = row_ok[:, None] & (ck[None, :] < DK)
    tl.store(out, tl.load(out, mask=out_ok, other=0.0) + dq * scale, mask=out_ok)


def window_attention_backward(q: Tensor, k_win: Tensor, v_win: Tensor, grad_o: Tensor, gate: Tensor,
                              lse: Tensor, delta: Tensor, dq: Tensor, config: NSAConfig, scale: float,
                              tiles: BackwardTiles | None = None,
                              dq_tiles: BackwardTiles | None = None) -> tuple[Tensor, Tensor]:
    """Gradients of the window branch: adds its part to dq (float32 [B, T, HQ, dk]) and returns
    dk_win, dv_win (float32 [B, T, H, dk|dv]).

    grad_o [B, T, HQ, dv] is the gradient of the gated output; gate [B, T, HQ] this branch's
    gate, lse its forward log-sum-exp, delta its rowsum(dO * O) (views, float32 for lse/delta).
    `tiles` are the dK/dV kernel's, `dq_tiles` the dQ kernel's (default: `tiles` when given, else the
    tuned `backward_tile_plans`, the first that fits the GPU's shared memory).
    """
    B, T, HQ, dk = q.shape
    H, dv = k_win.shape[2], v_win.shape[3]
    G = HQ // H
    dk_win = torch.empty((B, T, H, dk), dtype=torch.float32, device=q.device)
    dv_win = torch.empty((B, T, H, dv), dtype=torch.float32, device=q.device)
    dkdv_plans, dq_plans = backward_tile_plans(group_tile(G, 1)[1], dk, dv, q.element_size())
    if tiles is not None:
        dkdv_plans, dq_plans = [tiles], [dq_tiles or tiles]
    elif dq_tiles is not None:
        dq_plans = [dq_tiles]
    common = dict(T=T, H=H, G=G, DK=dk, DV=dv, scale=scale, W=config.window, DKP=padded(dk), DVP=padded(dv),
                  PREC=dot_precision(q.dtype), INTERP=interpreted())
    strides = (q.stride(0), q.stride(1), q.stride(2), k_win.stride(0), k_win.stride(1), k_win.stride(2),
               v_win.stride(0), v_win.stride(1), v_win.stride(2), grad_o.stride(0), grad_o.stride(1),
               grad_o.stride(2), gate.stride(0), gate.stride(1), gate.stride(2), lse.stride(0),
               lse.stride(1), lse.stride(2), delta.stride(0), delta.stride(1), delta.stride(2))

    def dkdv_launch(t: BackwardTiles) -> tuple[tuple, dict]:
        bt, gp = group_tile(G, t.rows)
        return ((q, k_win, v_win, grad_o, gate, lse, delta, dk_win, dv_win, *strides, *dk_win.stride()[:3],
                 *dv_win.stride()[:3]),
                dict(BT=bt, GP=gp, BN=t.keys, num_warps=t.num_warps, num_stages=t.num_stages, **common))

    def dq_launch(t: BackwardTiles) -> tuple[tuple, dict]:
        bt, gp = group_tile(G, t.rows)
        return ((q, k_win, v_win, grad_o, gate, lse, delta, dq, *strides, *dq.stride()[:3]),
                dict(BT=bt, GP=gp, BN=t.keys, num_warps=t.num_warps, num_stages=t.num_stages, **common))

    tiles = first_fit(_win_bwd_dkdv, dkdv_plans, dkdv_launch, q.device)
    args, kwargs = dkdv_launch(tiles)
    _win_bwd_dkdv[(triton.cdiv(T, tiles.keys), B * H)](*args, **kwargs)
    dq_tiles = first_fit(_win_bwd_dq, dq_plans, dq_launch, q.device)
    args, kwargs = dq_launch(dq_tiles)
    _win_bwd_dq[(triton.cdiv(T, kwargs["BT"]), B * H)](*args, **kwargs)
    return dk_win, dv_win
