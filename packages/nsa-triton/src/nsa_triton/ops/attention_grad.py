"""The flash-style backward step shared by the dense branches (compressed, window) and its tiles.

With the forward's log-sum-exp, one tile of scores is recomputed and differentiated:
P = exp(scale * q k^T - lse) (0 where a key is not visible), the branch's output gradient is
dO = g * grad_o with g the branch's gate, folded in without forming it: dV += (g P)^T grad_o,
dP = g * (grad_o V^T), dS = P * (dP - delta) with delta = rowsum(dO * O) from the combine
backward, dQ = scale * dS K and dK = scale * dS^T Q.

Tiles: both kernels of a branch use one (query rows, keys) pair. The dK/dV kernel keeps a key
tile and its two float32 gradients resident and streams query row tiles; the dQ kernel keeps a
row tile resident and streams key tiles. `backward_tiles` halves the larger side until the
operand tiles (resident + `NUM_STAGES` streamed copies, plus the two [rows, keys] dot operands)
fit `SMEM_BUDGET`, then drops to one stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl

from nsa_triton.ops.online import dot
from nsa_triton.ops.tiles import padded

ROWS = 64  # query rows ((token, head) pairs) per tile, before shrinking
KEYS = 64  # keys per tile, before shrinking
MIN_TILE = 16  # the smallest tl.dot dimension
DOT_MIN = tl.constexpr(MIN_TILE)  # the same, for kernels' static asserts
NUM_STAGES = 2  # software-pipeline depth of the streamed loads
SMEM_BUDGET = 160 * 1024  # bytes of shared memory the tiles may plan for (H200: 228 KiB per SM)
WIDE_ACC = 64 * 128  # float32 accumulator elements per program above which 8 warps run, not 4
NUM_WARPS, NUM_WARPS_WIDE = 4, 8


@dataclass(frozen=True)
class BackwardTiles:
    """Tile sizes and launch settings of one branch's dK/dV and dQ kernels."""

    rows: int
    keys: int
    num_warps: int
    num_stages: int


def _footprint(rows: int, keys: int, width: int, itemsize: int, stages: int) -> int:
    """Shared-memory bytes of the worse of the two kernels (`width` = padded dk + padded dv): dK/dV
    keeps keys resident and streams rows, dQ the reverse."""
    operands = max(keys + stages * rows, rows + stages * keys)
    return itemsize * (width * operands + 2 * rows * keys)


def backward_tiles(group_padded: int, dk: int, dv: int, itemsize: int) -> BackwardTiles:
    """Tiles for head dims dk/dv and inputs of `itemsize` bytes; a row tile holds at least the
    padded group of one token (`group_padded` rows)."""
    width = padded(dk) + padded(dv)
    rows, keys, stages = max(ROWS, group_padded), KEYS, NUM_STAGES
    while _footprint(rows, keys, width, itemsize, stages) > SMEM_BUDGET:
        if keys >= rows and keys > MIN_TILE:
            keys //= 2
        elif rows > max(MIN_TILE, group_padded):
            rows //= 2
        elif stages > 1:
            stages -= 1
        else:
            break
    acc = max(rows, keys) * width
    return BackwardTiles(rows=rows, keys=keys, num_warps=NUM_WARPS_WIDE if acc > WIDE_ACC else NUM_WARPS,
                         num_stages=stages)


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
