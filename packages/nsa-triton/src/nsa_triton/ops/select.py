"""The selected branch (Eq. 12), the NSA way, and top-n selection.

One program per (token, kv head) loads the G query heads of the group (padded to >= 16 rows for
the matrix units) once and walks that token's n selected blocks (indices [B, T, H, n], -1
padded), keys clamped to positions <= t, with an online softmax in float32.

Top-n (Eq. 11), one program per token for all kv heads: blocks 0, c-1 and c are forced, then the
highest scores among blocks 0..c, n picks of an argmax that breaks ties towards the lower index
(the order of `nsa_torch.ops.select.top_n`'s stable sort); the picks are written ascending
through a prefix sum, -1 padded.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from nsa_spec.config import NSAConfig
from torch import Tensor

from nsa_triton.ops.online import finish, interpreted, online_step
from nsa_triton.ops.tiles import dot_precision, padded


@triton.jit
def _slc_fwd(Q, K, V, IDX, O, LSE, sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h,
             si_b, si_t, si_h, so_b, so_t, so_h, sl_b, sl_t, sl_h, H, G, DK, DV, scale, N_SEL: tl.constexpr,
             L_SLC: tl.constexpr, BL: tl.constexpr, KB: tl.constexpr, GP: tl.constexpr,
             DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr, INTERP: tl.constexpr):
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
    for slot in range(0, N_SEL, KB):
        blk = tl.load(IDX + slot + which, mask=slot + which < N_SEL, other=-1)
        pos = blk.to(tl.int64) * L_SLC + offs
        ok = (blk >= 0) & (offs < L_SLC) & (pos <= t)
        k = tl.load(K + pos[:, None] * sk_t + ck[None, :], mask=ok[:, None] & (ck[None, :] < DK), other=0.0)
        v = tl.load(V + pos[:, None] * sv_t + cv[None, :], mask=ok[:, None] & (cv[None, :] < DV), other=0.0)
        m, den, acc = online_step(q, k, v, ok[None, :], m, den, acc, scale, PREC, INTERP)
    o, lse = finish(m, den, acc)
    tl.store(O + b * so_b + t * so_t + hq[:, None] * so_h + cv[None, :], o,
             mask=g_ok[:, None] & (cv[None, :] < DV))
    tl.store(LSE + b * sl_b + t * sl_t + hq * sl_h, lse, mask=g_ok)


@triton.jit
def _top_n(S, IDX, ss_b, ss_t, ss_h, si_b, si_t, si_h, H, NB, L_SLC: tl.constexpr,
           N_SEL: tl.constexpr, HP: tl.constexpr, NBP: tl.constexpr, NP: tl.constexpr):
    t = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    hh = tl.arange(0, HP)
    j = tl.arange(0, NBP)
    c = t // L_SLC
    exists = (j <= c) & (j < NB)
    forced = exists & ((j == 0) | (j == c) | (j == c - 1))
    rows = b * si_b + t.to(tl.int64) * si_t + hh * si_h
    key = tl.load(S + b * ss_b + t.to(tl.int64) * ss_t + hh[:, None] * ss_h + j[None, :],
                  mask=(hh < H)[:, None] & exists[None, :], other=float("-inf"))
    key = tl.where(forced[None, :], float("inf"), key)
    picks = tl.minimum(c + 1, N_SEL)
    taken = tl.zeros([HP, NBP], tl.int32)
    for k in tl.static_range(N_SEL):
        best = tl.argmax(key, 1, tie_break_left=True)
        take = (j[None, :] == best[:, None]) & (k < picks)
        taken = tl.where(take, 1, taken)
        key = tl.where(take, float("-inf"), key)
    rank = tl.cumsum(taken, 1) - 1
    h_ok = (hh < H)[:, None]
    tl.store(IDX + rows[:, None] + rank, (j[None, :] + 0 * rank), mask=(taken > 0) & h_ok)
    slot = tl.arange(0, NP)
    tl.store(IDX + rows[:, None] + slot[None, :], tl.full([HP, NP], -1, tl.int32),
             mask=h_ok & (slot[None, :] >= picks) & (slot[None, :] < N_SEL))


def top_n(scores: Tensor, config: NSAConfig, num_warps: int = 4) -> Tensor:
    """Eq. 11 on scores [B, T, H, n_blocks] -> indices [B, T, H, n] (int32, ascending, -1 padded)."""
    B, T, H, nb = scores.shape
    n = config.top_n
    indices = torch.empty((B, T, H, n), dtype=torch.int32, device=scores.device)
    _top_n[(T, B)](
        scores, indices, scores.stride(0), scores.stride(1), scores.stride(2), indices.stride(0),
        indices.stride(1), indices.stride(2), H, nb, L_SLC=config.slc_len, N_SEL=n,
        HP=triton.next_power_of_2(H), NBP=triton.next_power_of_2(nb), NP=triton.next_power_of_2(n),
        num_warps=num_warps,
    )
    return indices


def selected_attention(q: Tensor, k_slc: Tensor, v_slc: Tensor, indices: Tensor, o: Tensor,
                       lse: Tensor, config: NSAConfig, scale: float, blocks_per_step: int = 1,
                       num_warps: int = 4, num_stages: int = 2) -> None:
    """Write the selected branch of q [B, T, HQ, dk] over the blocks `indices` [B, T, H, n] of
    k_slc/v_slc [B, T, H, d] into o [B, T, HQ, dv] (float32) and lse [B, T, HQ] (a float32 view).

    Each loop step folds `blocks_per_step` selected blocks (a power of two) into the softmax."""
    B, T, HQ, dk = q.shape
    H, dv = k_slc.shape[2], v_slc.shape[3]
    indices = indices.contiguous()
    _slc_fwd[(T, B * H)](
        q, k_slc, v_slc, indices, o, lse, q.stride(0), q.stride(1), q.stride(2), k_slc.stride(0),
        k_slc.stride(1), k_slc.stride(2), v_slc.stride(0), v_slc.stride(1), v_slc.stride(2),
        indices.stride(0), indices.stride(1), indices.stride(2), o.stride(0), o.stride(1),
        o.stride(2), lse.stride(0), lse.stride(1), lse.stride(2), H, HQ // H, dk, dv,
        scale, N_SEL=indices.shape[3], L_SLC=config.slc_len, BL=padded(config.slc_len), KB=blocks_per_step,
        GP=padded(HQ // H), DKP=padded(dk), DVP=padded(dv), PREC=dot_precision(q.dtype),
        INTERP=interpreted(), num_warps=num_warps, num_stages=num_stages,
    )
