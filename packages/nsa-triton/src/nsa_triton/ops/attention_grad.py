"""The flash-style backward step shared by the dense branches (compressed, window) and its tiles.

With the forward's log-sum-exp, one tile of scores is recomputed and differentiated:
P = exp(scale * q k^T - lse) (0 where a key is not visible), the branch's output gradient is
dO = g * grad_o with g the branch's gate, folded in without forming it: dV += (g P)^T grad_o,
dP = g * (grad_o V^T), dS = P * (dP - delta) with delta = rowsum(dO * O) from the combine
backward, dQ = scale * dS K and dK = scale * dS^T Q.

Tiles: the dK/dV kernel keeps a key tile and its two float32 gradients resident and streams
query row tiles; the dQ kernel keeps a row tile resident and streams key tiles. Their starting
tiles (`DKDV_TILES`, `DQ_TILES`) are the fastest of `benchmarks/sweep_backward.py` on an H200
(bf16, dk = dv = 128, T = 32k); `backward_tile_plans` halves the larger side of each until its
operand tiles (resident + `num_stages` streamed copies, plus the two [rows, keys] dot operands) fit
`SMEM_BUDGET`, then drops stages, and lists smaller plans after it for GPUs with less shared memory
(the launchers take the first that compiles within the GPU's limit: `tiles.first_fit`).
"""

from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl

from nsa_triton.ops.online import dot
from nsa_triton.ops.tiles import padded

MIN_TILE = 16  # the smallest tl.dot dimension
DOT_MIN = tl.constexpr(MIN_TILE)  # the same, for kernels' static asserts
SMEM_BUDGET = 160 * 1024  # bytes of shared memory the tiles may plan for (H200: 228 KiB per SM)
WIDE_ACC = 64 * 256  # float32 accumulator elements per program above which 8 warps run, not 4


@dataclass(frozen=True)
class BackwardTiles:
    """Tile sizes and launch settings of one branch's dK/dV or dQ kernel."""

    rows: int
    keys: int
    num_warps: int
    num_stages: int


# H200, bf16, dk = dv = 128, T = 32k (sweep_backward.py): compressed dK/dV 20.8 -> 8.2 ms and dQ
# 11.3 -> 5.2 ms, window dK/dV 8.8 -> 3.6 ms and dQ 6.2 -> 2.9 ms against 64 x 64, 8 warps, 2 stages.
DKDV_TILES = BackwardTiles(rows=16, keys=64, num_warps=4, num_stages=3)
DQ_TILES = BackwardTiles(rows=128, keys=32, num_warps=4, num_stages=3)


def _fit(start: BackwardTiles, keys_resident: bool, group_padded: int, dk: int, dv: int,
         itemsize: int, budget: int = SMEM_BUDGET) -> BackwardTiles:
    """`start` shrunk until its shared-memory plan fits `budget`; a row tile holds at least
    `group_padded` rows (one token's padded group)."""
    width = padded(dk) + padded(dv)
    rows, keys, stages = max(start.rows, group_padded), start.keys, start.num_stages

    def footprint() -> int:
        resident, streamed = (keys, rows) if keys_resident else (rows, keys)
        return itemsize * (width * (resident + stages * streamed) + 2 * rows * keys)

    while footprint() > budget:
        if keys >= rows and keys > MIN_TILE:
            keys //= 2
        elif rows > max(MIN_TILE, group_padded):
            rows //= 2
        elif stages > 1:
            stages -= 1
        else:
            break
    acc = keys * width if keys_resident else rows * padded(dk)
    return BackwardTiles(rows=rows, keys=keys, num_warps=max(start.num_warps, 8 if acc > WIDE_ACC else 4),
                         num_stages=stages)


def backward_tile_plans(group_padded: int, dk: int, dv: int,
                        itemsize: int) -> tuple[list[BackwardTiles], list[BackwardTiles]]:
    """(dK/dV plans, dQ plans) for head dims dk/dv and inputs of `itemsize` bytes, a row tile
    holding at least the padded group of one token (`group_padded` rows): first the tuned tiles
    fitted to SMEM_BUDGET, then those that fit ever smaller budgets (down to SMEM_BUDGET / 8), which
    `tiles.first_fit` tries on a GPU with less shared memory than the H200."""
    plans: tuple[list[BackwardTiles], list[BackwardTiles]] = ([], [])
    for budget in (SMEM_BUDGET * k // 8 for k in (8, 6, 4, 3, 2, 1)):
        for found, start, keys_resident in zip(plans, (DKDV_TILES, DQ_TILES), (True, False), strict=True):
            tiles = _fit(start, keys_resident, group_padded, dk, dv, itemsize, budget)
            if tiles not in found:
                found.append(tiles)
    return plans


@triton.jit
def load_rows(Q, DO, GATE, LSE, DELTA, t, hq, row_ok, sq_t, sq_h, so_t, so_h, sg_t, sg_h, sl_t, sl_h,
              sd_t, sd_h, DK, DV, DKP: tl.constexpr, DVP: tl.constexpr):
    """Per-row inputs of a row tile (rows = (token t, query head hq) pairs, pointers already at
    the batch): q [M, DKP], grad_o [M, DVP], gate, lse (-inf made 0), delta [M] (float32)."""
    t64 = t.to(tl.int64)
    ck = tl.arange(0, DKP)
    cv = tl.arange(0, DVP)
    q = tl.load(Q + t64[:, None] * sq_t + hq[:, None] * sq_h + ck[None, :],
                mask=row_ok[:, None] & (ck[None, :] < DK), other=0.0)  # [M, DKP]
    do = tl.load(DO + t64[:, None] * so_t + hq[:, None] * so_h + cv[None, :],
                 mask=row_ok[:, None] & (cv[None, :] < DV), other=0.0)  # [M, DVP]
    gate = tl.load(GATE + t64 * sg_t + hq * sg_h, mask=row_ok, other=0.0).to(tl.float32)  # [M]
    lse = tl.load(LSE + t64 * sl_t + hq * sl_h, mask=row_ok, other=0.0)  # [M]
    lse = tl.where(lse == float("-inf"), 0.0, lse)
    delta = tl.load(DELTA + t64 * sd_t + hq * sd_h, mask=row_ok, other=0.0)  # [M]
    return q, do, gate, lse, delta


@triton.jit
def grad_step(q, k, v, do, gate, lse, delta, visible, scale, PREC: tl.constexpr, INTERP: tl.constexpr):
    """(g P, dS), both [M, N] float32, of rows q [M, dk], grad_o `do` [M, dv], gate/lse/delta [M]
    against keys k [N, dk], v [N, dv] under `visible` [M, N]."""
    s = dot(q, tl.trans(k), PREC, INTERP) * scale  # [M, N]
    p = tl.where(visible, tl.exp(s - lse[:, None]), 0.0)  # [M, N]
    dp = dot(do, tl.trans(v), PREC, INTERP) * gate[:, None]  # [M, N]
    return p * gate[:, None], p * (dp - delta[:, None])


@triton.jit
def grad_step_keys(q, k, v, do, gate, lse, delta, visible, scale, PREC: tl.constexpr,
                   INTERP: tl.constexpr):
    """grad_step transposed, for the dK/dV kernels: ((g P)^T, dS^T), both [N, M] float32, with
    `visible` [N, M]; the products then feed dV += (g P)^T grad_o and dK += dS^T q directly."""
    st = dot(k, tl.trans(q), PREC, INTERP) * scale  # [N, M]
    pt = tl.where(visible, tl.exp(st - lse[None, :]), 0.0)  # [N, M]
    dpt = dot(v, tl.trans(do), PREC, INTERP) * gate[None, :]  # [N, M]
    return pt * gate[None, :], pt * (dpt - delta[None, :])
