"""The sliding-window branch fused with the gated combine (Eq. 5).

A flash-style causal band: one program takes a tile of tokens times the G query heads of one kv
head (GQA by mapping query heads to their kv head) and visits only the keys in
[t_first - w + 1, t_last]. It then mixes its own output with the compressed and selected branch
outputs (float32, written earlier into `branch_o`) under the gates, stores its own output beside
them (the backward's gate gradient reads all three) and writes the final o in q's dtype.
"""

from __future__ import annotations

import triton
import triton.language as tl
from nsa_spec.config import NSAConfig
from torch import Tensor

from nsa_triton.ops.compress import _rows
from nsa_triton.ops.online import finish, interpreted, online_step
from nsa_triton.ops.tiles import dot_precision, group_tile, padded


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
    _win_fwd[(triton.cdiv(T, bt), B * H)](
        q, k_win, v_win, gates, branch_o, o, lse, q.stride(0), q.stride(1), q.stride(2),
        k_win.stride(0), k_win.stride(1), k_win.stride(2), v_win.stride(0), v_win.stride(1),
        v_win.stride(2), gates.stride(0), gates.stride(1), gates.stride(2), branch_o.stride(0),
        branch_o.stride(1), branch_o.stride(2), branch_o.stride(3), o.stride(0), o.stride(1),
        o.stride(2), lse.stride(0), lse.stride(1), lse.stride(2), T, H, HQ // H, dk, dv, scale, config.window,
        BT=bt, GP=gp, BN=bn, DKP=padded(dk), DVP=padded(dv), PREC=dot_precision(q.dtype),
        INTERP=interpreted(), num_warps=num_warps,
    )
