"""A lane-level NumPy model of csrc/select.cuh, run against the float64 oracle without a GPU.

It executes the kernel's own address formulas (every ldmatrix lane address, the mask, the C -> A
reuse of P, the per-warp online softmax and the warp-order merge) on models of ldmatrix and
mma.sync m16n8k16 written from the PTX ISA's fragment layouts (csrc/mma.cuh's header comment).
It checks the kernel's index math, not the compiler or the hardware: change it with select.cuh.
Expect o errors of a few 1e-3 (P rounded to bfloat16, as on the GPU) and lse errors near 1e-7.

    python packages/nsa-cuda/benchmarks/emulate_select.py
"""

from __future__ import annotations

import numpy as np
from nsa_spec import NSAConfig
from nsa_spec.reference.select import selected_attention as oracle
from nsa_spec.reference.select import top_n

LANE = np.arange(32)
QUAD = LANE % 4
ROWS, KEYS, PAD, WARPS = 16, 16, 8, 4  # select.cuh kRows, kKeys, kPad, kMaxWarps
LOG2E = 1.4426950408889634


def bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest even), kept as float32."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return bits.astype(np.uint32).view(np.float32)


def ldmatrix_x4(smem: np.ndarray, rows: np.ndarray, cols: np.ndarray, trans: bool = False) -> np.ndarray:
    """Lane i addresses row i % 8 of matrix i // 8 at smem[rows[i], cols[i]:+8] -> [32 lanes, 4 regs,
    2 halves]: register j holds matrix j's (lane // 4, 2 (lane % 4) + e), transposed with `trans`."""
    out = np.zeros((32, 4, 2), np.float32)
    for j in range(4):
        mat = np.stack([smem[rows[8 * j + r], cols[8 * j + r]: cols[8 * j + r] + 8] for r in range(8)])
        for e in range(2):
            out[:, j, e] = mat[2 * QUAD + e, LANE // 4] if trans else mat[LANE // 4, 2 * QUAD + e]
    return out


def mma(d: np.ndarray, a: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> None:
    """d [32, 4] += A [16, 16] B [16, 8] from the fragments a [32, 4, 2], b0, b1 [32, 2]."""
    A = np.zeros((16, 16))
    B = np.zeros((16, 8))
    g = LANE // 4
    for e in range(2):
        A[g, 2 * QUAD + e], A[g + 8, 2 * QUAD + e] = a[:, 0, e], a[:, 1, e]
        A[g, 8 + 2 * QUAD + e], A[g + 8, 8 + 2 * QUAD + e] = a[:, 2, e], a[:, 3, e]
        B[2 * QUAD + e, g], B[8 + 2 * QUAD + e, g] = b0[:, e], b1[:, e]
    C = A @ B
    for e in range(2):
        d[:, e] += C[g, 2 * QUAD + e]
        d[:, 2 + e] += C[g + 8, 2 * QUAD + e]


def warp_pass(q_s, k, v, idx, t, ls, scale, dim, warp):
    """One warp's tiles -> (row max [16], row sum [16], accumulator [16, dim]), as select.cuh."""
    dk, dv = k.shape[1], v.shape[1]
    tiles_per_block = -(-ls // KEYS)
    acc = np.zeros((dim // 8, 32, 4), np.float32)
    row_max = np.full((32, 2), -np.inf, np.float32)
    row_sum = np.zeros((32, 2), np.float32)
    for i in range(warp, len(idx) * tiles_per_block, WARPS):
        blk, in_block = idx[i // tiles_per_block], (i % tiles_per_block) * KEYS
        pos0 = blk * ls + in_block
        if blk < 0 or pos0 > t:
            continue
        k_s = np.zeros((KEYS, dim + PAD), np.float32)
        v_s = np.zeros((KEYS, dim + PAD), np.float32)
        for r in range(KEYS):
            if in_block + r < ls and pos0 + r <= t:
                k_s[r, :dk], v_s[r, :dv] = k[pos0 + r], v[pos0 + r]
        s = np.zeros((2, 32, 4), np.float32)
        for kk in range(0, min(dim, -(-dk // 16) * 16), 16):
            a = ldmatrix_x4(q_s, LANE % 16, kk + (LANE // 16) * 8)
            bk = ldmatrix_x4(k_s, LANE % 8 + (LANE // 16) * 8, kk + ((LANE // 8) % 2) * 8)
            mma(s[0], a, bk[:, 0], bk[:, 1])
            mma(s[1], a, bk[:, 2], bk[:, 3])
        for nt in range(2):
            for e in range(4):
                key = nt * 8 + 2 * QUAD + e % 2
                ok = (in_block + key < ls) & (pos0 + key <= t)
                s[nt][:, e] = np.where(ok, s[nt][:, e] * np.float32(scale * LOG2E), -np.inf)
        base = np.zeros((32, 2), np.float32)
        for r in range(2):
            tile_max = np.maximum(s[0][:, 2 * r:2 * r + 2].max(1), s[1][:, 2 * r:2 * r + 2].max(1))
            tile_max = tile_max.reshape(8, 4).max(1).repeat(4)  # the two xor shuffles of a quad
            new = np.maximum(row_max[:, r], tile_max)
            base[:, r] = np.where(new == -np.inf, 0, new)
            alpha = np.exp2(row_max[:, r] - base[:, r])
            row_max[:, r] = new
            row_sum[:, r] *= alpha
            acc[:, :, 2 * r:2 * r + 2] *= alpha[:, None]
        for nt in range(2):
            for e in range(4):
                s[nt][:, e] = np.exp2(s[nt][:, e] - base[:, e // 2])
                row_sum[:, e // 2] += s[nt][:, e]
        pa = bf16(np.stack([s[0][:, 0:2], s[0][:, 2:4], s[1][:, 0:2], s[1][:, 2:4]], 1))  # [32, 4, 2]
        for jp in range(0, min(dim, -(-dv // 16) * 16), 16):
            bv = ldmatrix_x4(v_s, LANE % 8 + ((LANE // 8) % 2) * 8, jp + (LANE // 16) * 8, trans=True)
            mma(acc[jp // 8], pa, bv[:, 0], bv[:, 1])
            mma(acc[jp // 8 + 1], pa, bv[:, 2], bv[:, 3])
    row_sum = row_sum.reshape(8, 4, 2).sum(1)  # [8 groups, 2]
    g = LANE // 4
    full = np.zeros((ROWS, dim))
    for j in range(dim // 8):
        for e in range(4):
            full[g + 8 * (e // 2), j * 8 + 2 * QUAD + e % 2] = acc[j, :, e]
    return row_max[::4].T.reshape(16), row_sum.T.reshape(16), full


def cta(q, k, v, idx, t, ls, scale, dim):
    """One CTA: q [G, dk] of the group, k/v [T, d] of its kv head, idx [n] -> o [G, dv], lse [G]."""
    G, dk, dv = q.shape[0], q.shape[1], v.shape[1]
    q_s = np.zeros((ROWS, dim + PAD), np.float32)
    q_s[:G, :dk] = q
    parts = [warp_pass(q_s, k, v, idx, t, ls, scale, dim, w) for w in range(WARPS)]
    top = np.max([m for m, _, _ in parts], 0)
    total, out = np.zeros(ROWS), np.zeros((ROWS, dv))
    for m, s, a in parts:
        f = np.where(m == -np.inf, 0.0, np.exp2(m - top))
        total += s * f
        out += a[:, :dv] * f[:, None]
    safe = np.where(total > 0, total, 1.0)
    o = np.where(total[:, None] > 0, out / safe[:, None], 0.0)
    lse = np.where(total > 0, (top + np.log2(safe)) * np.log(2), -np.inf)
    return o[:G], lse[:G]


def check(T, HQ, H, dk, dv, ls, n, dim, seed=0):
    """Every (token, kv head) CTA of one case against the oracle: (max |o err|, max |lse err|)."""
    rng = np.random.default_rng(seed)
    block = min(8, ls)
    cfg = NSAConfig(cmp_len=block, cmp_stride=block, slc_len=ls, top_n=n, window=16)
    idx = top_n(rng.random((T, H, -(-T // ls))), np.arange(T), cfg)
    q = bf16(1.5 * rng.standard_normal((T, HQ, dk)))
    k = bf16(rng.standard_normal((T, H, dk)))
    v = bf16(rng.standard_normal((T, H, dv)))
    ref_o, ref_lse = oracle(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), idx, cfg)
    G, scale = HQ // H, cfg.softmax_scale(dk)
    err_o = err_lse = 0.0
    for t in range(T):
        for h in range(H):
            heads = slice(h * G, (h + 1) * G)
            o, lse = cta(q[t, heads], k[:, h], v[:, h], idx[t, h], t, ls, scale, dim)
            err_o = max(err_o, float(np.abs(o - ref_o[t, heads]).max()))
            err_lse = max(err_lse, float(np.abs(lse - ref_lse[t, heads]).max()))
    return err_o, err_lse


CASES = (  # (T, HQ, H, dk, dv, l', n, head-dim tile)
    (40, 4, 2, 16, 8, 16, 4, 64),
    (30, 16, 1, 12, 20, 8, 5, 64),
    (50, 2, 1, 32, 16, 24, 4, 64),
    (70, 8, 1, 64, 64, 16, 3, 64),
    (20, 3, 1, 192, 128, 64, 4, 256),
)

if __name__ == "__main__":
    for case in CASES:
        err_o, err_lse = check(*case)
        print(f"{case}: max |o - oracle| = {err_o:.2e}, max |lse - oracle| = {err_lse:.2e}", flush=True)
