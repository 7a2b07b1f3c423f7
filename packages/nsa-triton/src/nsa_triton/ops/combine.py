"""The backward of the gated combine (Eq. 5); its forward is fused into the window kernel
(`nsa_triton.ops.window`).

o = sum_c g_c o_c, so dg_c = rowsum(grad_o * o_c) and each branch sees dO_c = g_c grad_o, whose
rowsum(dO_c * O_c) = g_c dg_c is the delta its flash-style backward needs. One pass over grad_o
and the saved float32 branch outputs, a tile of (token, query head) rows per program, float32
sums.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from nsa_triton.ops.tiles import padded

ELEMS = 8192  # grad_o elements per program (rows = ELEMS // padded dv)
NUM_WARPS = 4
BRANCHES = 3


@triton.jit
def _combine_bwd(DO, GATES, BRANCH_O, GG, DELTA, so_b, so_t, so_h, sg_b, sg_t, sg_h, sb_b, sb_t, sb_h,
                 sb_c, sgg_b, sgg_t, sgg_h, sd_b, sd_t, sd_h, T, HQ, ROWS, DV, BR: tl.constexpr,
                 DVP: tl.constexpr, N_BRANCH: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    row_ok = r < ROWS
    b = r // (T * HQ)
    t = (r // HQ) % T
    h = r % HQ
    cv = tl.arange(0, DVP)
    ok = row_ok[:, None] & (cv[None, :] < DV)
    do = tl.load(DO + (b * so_b + t * so_t + h * so_h)[:, None] + cv[None, :], mask=ok,
                 other=0.0).to(tl.float32)  # [BR, DVP]
    branch = (b * sb_b + t * sb_t + h * sb_h)[:, None] + cv[None, :]
    gates = GATES + b * sg_b + t * sg_t + h * sg_h
    grads = GG + b * sgg_b + t * sgg_t + h * sgg_h
    deltas = DELTA + b * sd_b + t * sd_t + h * sd_h
    for c in tl.static_range(N_BRANCH):
        o_c = tl.load(BRANCH_O + c * sb_c + branch, mask=ok, other=0.0)  # [BR, DVP]
        dg = tl.sum(do * o_c, 1)  # [BR]
        g = tl.load(gates + c, mask=row_ok, other=0.0).to(tl.float32)  # [BR]
        tl.store(grads + c, dg.to(GG.dtype.element_ty), mask=row_ok)
        tl.store(deltas + c, g * dg, mask=row_ok)


def combine_backward(grad_o: Tensor, gates: Tensor, branch_o: Tensor) -> tuple[Tensor, Tensor]:
    """(grad_gates [B, T, HQ, 3] in gates' dtype, delta float32 [B, T, HQ, 3]) from grad_o
    [B, T, HQ, dv], the gate values and the float32 branch outputs branch_o [B, T, HQ, 3, dv]:
    grad_gates[..., c] = sum_d grad_o * branch_o[..., c, :], delta = gates * grad_gates."""
    B, T, HQ, dv = grad_o.shape
    grad_gates = torch.empty(gates.shape, dtype=gates.dtype, device=gates.device)
    delta = torch.empty(gates.shape, dtype=torch.float32, device=gates.device)
    rows = B * T * HQ
    if rows == 0:
        return grad_gates, delta
    dvp = padded(dv)
    br = max(1, ELEMS // dvp)
    _combine_bwd[(triton.cdiv(rows, br),)](
        grad_o, gates, branch_o, grad_gates, delta, grad_o.stride(0), grad_o.stride(1), grad_o.stride(2),
        gates.stride(0), gates.stride(1), gates.stride(2), branch_o.stride(0), branch_o.stride(1),
        branch_o.stride(2), branch_o.stride(3), grad_gates.stride(0), grad_gates.stride(1),
        grad_gates.stride(2), delta.stride(0), delta.stride(1), delta.stride(2), T=T, HQ=HQ, ROWS=rows,
        DV=dv, BR=br, DVP=dvp, N_BRANCH=BRANCHES, num_warps=NUM_WARPS,
    )
    return grad_gates, delta
