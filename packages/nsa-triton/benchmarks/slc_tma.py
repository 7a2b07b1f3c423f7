"""An experiment: the token-by-token selected forward (`select._slc_fwd`) with its key/value tiles
loaded through TMA tensor descriptors (Hopper's bulk copies: one descriptor load per tile instead of
per-thread addresses and masks). Same arithmetic as `_slc_fwd` with one block per step; rows past T
come back as zeros, rows past the query are masked as there. Timed by time_forward.py ("slc tma").

    selected_attention_tma(q, k_slc, v_slc, indices, o, lse, config, scale)
"""

from __future__ import annotations

import triton
import triton.language as tl
from nsa_spec.config import NSAConfig
from nsa_triton.ops.online import finish, online_step
from nsa_triton.ops.tiles import dot_precision, padded
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor


@triton.jit
def _slc_fwd_tma(Q, KD, VD, IDX, O, LSE, sq_b, sq_t, sq_h, si_b, si_t, si_h, so_b, so_t, so_h, sl_b, sl_t,
                 sl_h, H, G, DK, DV, scale, N_SEL: tl.constexpr, L_SLC: tl.constexpr, BL: tl.constexpr,
                 GP: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    g = tl.arange(0, GP)
    g_ok = g < G
    hq = h * G + g
    ck = tl.arange(0, DKP)
    cv = tl.arange(0, DVP)
    q = tl.load(Q + b.to(tl.int64) * sq_b + t * sq_t + hq[:, None] * sq_h + ck[None, :],
                mask=g_ok[:, None] & (ck[None, :] < DK), other=0.0)
    m = tl.full([GP], float("-inf"), tl.float32)
    den = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, DVP], tl.float32)
    offs = tl.arange(0, BL)
    IDX += b.to(tl.int64) * si_b + t * si_t + h * si_h
    SUB: tl.constexpr = (L_SLC + BL - 1) // BL
    for step in range(0, N_SEL * SUB):
        slot = step // SUB
        blk = tl.load(IDX + slot)
        key0 = (step % SUB) * BL
        start = tl.maximum(blk, 0) * L_SLC + key0
        pos = start.to(tl.int64) + offs
        ok = (blk >= 0) & (key0 + offs < L_SLC) & (pos <= t)
        k = KD.load([b, start, h, 0]).reshape(BL, DKP)
        v = VD.load([b, start, h, 0]).reshape(BL, DVP)
        v = tl.where(ok[:, None], v, 0.0)
        m, den, acc = online_step(q, k, v, ok[None, :], m, den, acc, scale, PREC, False)
    o, lse = finish(m, den, acc)
    tl.store(O + b.to(tl.int64) * so_b + t * so_t + hq[:, None] * so_h + cv[None, :], o,
             mask=g_ok[:, None] & (cv[None, :] < DV))
    tl.store(LSE + b.to(tl.int64) * sl_b + t * sl_t + hq * sl_h, lse, mask=g_ok)


def selected_attention_tma(q: Tensor, k_slc: Tensor, v_slc: Tensor, indices: Tensor, o: Tensor, lse: Tensor,
                           config: NSAConfig, scale: float, keys: int = 64, num_warps: int = 4,
                           num_stages: int = 2) -> None:
    """`select.selected_attention` through TMA descriptors (module docstring)."""
    B, T, HQ, dk = q.shape
    H, dv = k_slc.shape[2], v_slc.shape[3]
    bl, dkp, dvp = min(padded(config.slc_len), keys), padded(dk), padded(dv)
    kd = TensorDescriptor(k_slc, list(k_slc.shape), list(k_slc.stride()), [1, bl, 1, dkp])
    vd = TensorDescriptor(v_slc, list(v_slc.shape), list(v_slc.stride()), [1, bl, 1, dvp])
    indices = indices.contiguous()
    _slc_fwd_tma[(T, B * H)](
        q, kd, vd, indices, o, lse, *q.stride()[:3], *indices.stride()[:3], *o.stride()[:3],
        *lse.stride()[:3], H, HQ // H, dk, dv, scale, N_SEL=indices.shape[3], L_SLC=config.slc_len, BL=bl,
        GP=padded(HQ // H), DKP=dkp, DVP=dvp, PREC=dot_precision(q.dtype), num_warps=num_warps,
        num_stages=num_stages,
    )
