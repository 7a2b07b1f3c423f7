// The selected branch forward (NSA Eq. 12), group-centric, on tensor cores through mma.sync
// (sm_80 and later; sm_90 runs this path too: a wgmma/TMA path for sm_90a is not written yet).
//
// One CTA per (token t, batch b, kv head h). Its kRows = 16 query rows are the G heads of the
// group (rows >= G are zero and never stored), so every selected block is read once for all G
// heads. The token's selected blocks (indices [B, T, H, n], -1 padded) are cut into key tiles of
// kKeys keys; warp w takes tiles w, w + warps, ... (tiles whose first key is after t are
// skipped), streams them into its own double buffer with cp.async and folds each into a float32
// online softmax (log2 domain) of its own. Keys after t or past the end of a block (l' not a
// multiple of kKeys) are masked. At the end the warps' (max, sum, accumulator) are merged in
// warp order through shared memory: no atomics, so the result is bitwise deterministic.
//
// Head dims are padded to kDim (64, 128 or 256); the mma steps over padded columns are skipped,
// the padded shared columns are zero. float32 inputs take `selected_attention_fwd_float32` below.
#pragma once

#include "mma.cuh"
#include "params.h"

namespace nsa_cuda {

constexpr int kRows = kMmaM;   // query rows per CTA: the G heads of one group, padded
constexpr int kKeys = 2 * kMmaN;  // keys per warp step: two n8 score tiles = one k16 step of P V
constexpr int kStages = 2;     // cp.async buffers per warp: load tile i + 1 while computing tile i
constexpr int kMaxWarps = 4;
constexpr int kPad = 8;        // elements added to each shared row so ldmatrix rows hit distinct banks
constexpr int kElementBytes = 2;  // bf16 and fp16
constexpr int kChunk = kCopyBytes / kElementBytes;  // elements per cp.async
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

static_assert(kRows == kMmaM, "one mma row tile holds the whole group");
static_assert(kKeys == 2 * kMmaN && kKeys == kMmaK,
              "a key tile is two n8 tiles of scores and one k16 step of P V");

// Shared-memory layout of a CTA for head dims padded to kDim, in elements unless said.
template <int kDim>
struct SelectedTile {
  static_assert(kDim % kMmaK == 0, "q.k walks the head dim in k16 steps");
  static_assert(kDim % (2 * kMmaN) == 0, "P V walks value columns in pairs of n8 tiles");
  static constexpr int kStride = kDim + kPad;  // elements per shared row
  static_assert((kStride * kElementBytes) % kCopyBytes == 0,
                "shared rows stay 16-byte aligned for cp.async and ldmatrix");
  static constexpr int kQElems = kRows * kStride;              // Q [kRows, kStride]
  static constexpr int kStageElems = 2 * kKeys * kStride;      // K [kKeys, kStride], V [kKeys, kStride]
  static constexpr int kWarpElems = kStages * kStageElems;     // one warp's buffers
  static constexpr int kMergeFloatsPerWarp = kRows * kDim;     // accumulator [kRows, kDim] float
  static_assert(kMergeFloatsPerWarp * sizeof(float) <= kWarpElems * kElementBytes,
                "the merge area reuses each warp's stage buffers");
  static_assert((kQElems * kElementBytes) % kCopyBytes == 0, "stage buffers start 16-byte aligned");
  static constexpr int kStatFloats = 2 * kMaxWarps * kRows;    // per warp and row: max, sum

  // Dynamic shared memory of a CTA of `warps` warps, in bytes.
  static constexpr size_t bytes(int warps) {
    return static_cast<size_t>(kQElems + warps * kWarpElems) * kElementBytes +
           kStatFloats * sizeof(float);
  }
};

template <typename T, int kDim>
__global__ void __launch_bounds__(kMaxWarps* kWarpSize)
    selected_attention_fwd(const SelectedParams p, const bool vector_loads) {
  static_assert(sizeof(T) == kElementBytes, "bf16 or fp16");
  using Tile = SelectedTile<kDim>;
  constexpr int kStride = Tile::kStride;
  constexpr float kNegInf = -__builtin_huge_valf();

  extern __shared__ __align__(16) unsigned char smem[];
  T* q_s = reinterpret_cast<T*>(smem);  // [kRows, kStride]
  T* stage_s = q_s + Tile::kQElems;     // [warps, kStages, 2, kKeys, kStride]

  const int warps = blockDim.x / kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int group = lane / 4;  // mma fragment row (and row + 8)
  const int quad = lane % 4;   // mma fragment column pair
  float* max_s = reinterpret_cast<float*>(stage_s + warps * Tile::kWarpElems);  // [kMaxWarps, kRows]
  float* sum_s = max_s + kMaxWarps * kRows;                                      // [kMaxWarps, kRows]

  const int64_t t = blockIdx.x;
  const int64_t b = blockIdx.y / p.heads_kv;
  const int64_t h = blockIdx.y % p.heads_kv;
  if (t >= p.tokens || b >= p.batch) return;  // the whole CTA: the grid is exact, this is a guard

  const T* q = static_cast<const T*>(p.q) + b * p.q_stride_b + t * p.q_stride_t + h * p.group * p.q_stride_h;
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride_b + h * p.k_stride_h;
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
  const int32_t* idx = p.indices + b * p.idx_stride_b + t * p.idx_stride_t + h * p.idx_stride_h;
  const T zero = Element<T>::from_float(0.0f);

  // Q [kRows, kDim]: the group's heads, zero beyond G rows and dk columns. Each element once.
  for (int e = threadIdx.x; e < kRows * kDim; e += blockDim.x) {
    const int row = e / kDim, col = e % kDim;
    q_s[row * kStride + col] = (row < p.group && col < p.dk) ? q[row * p.q_stride_h + col] : zero;
  }
  // This warp's K/V buffers start zero: columns past dk/dv up to the next k16 are read by mma.
  T* warp_s = stage_s + warp * Tile::kWarpElems;
  static_assert((Tile::kWarpElems * kElementBytes) % sizeof(uint4) == 0, "whole 16-byte words per warp");
  uint4* warp_words = reinterpret_cast<uint4*>(warp_s);
  for (int e = lane; e < Tile::kWarpElems * kElementBytes / static_cast<int>(sizeof(uint4)); e += kWarpSize) {
    warp_words[e] = make_uint4(0u, 0u, 0u, 0u);
  }
  __syncthreads();

  const int tiles_per_block = (p.slc_len + kKeys - 1) / kKeys;
  const int total = p.top_n * tiles_per_block;
  // The first tile from i on (stepping by `warps`) of a selected block with a key <= t.
  auto next_tile = [&](int i) {
    for (; i < total; i += warps) {
      const int64_t blk = idx[i / tiles_per_block];
      if (blk >= 0 && blk * p.slc_len + (i % tiles_per_block) * kKeys <= t) return i;
    }
    return total;
  };
  // Keys [pos0, pos0 + kKeys) of tile i into buffer `stage`; rows past t or past the block are zero.
  auto load_tile = [&](int i, int stage) {
    const int in_block = (i % tiles_per_block) * kKeys;
    const int64_t pos0 = static_cast<int64_t>(idx[i / tiles_per_block]) * p.slc_len + in_block;
    T* k_dst = warp_s + stage * Tile::kStageElems;  // [kKeys, kStride]
    T* v_dst = k_dst + kKeys * kStride;             // [kKeys, kStride]
    if (vector_loads) {
      const int k_chunks = p.dk / kChunk, v_chunks = p.dv / kChunk;
      for (int c = lane; c < kKeys * k_chunks; c += kWarpSize) {
        const int row = c / k_chunks, col = (c % k_chunks) * kChunk;
        const bool ok = in_block + row < p.slc_len && pos0 + row <= t;
        cp_async_16(k_dst + row * kStride + col, ok ? k + (pos0 + row) * p.k_stride_t + col : k, ok);
      }
      for (int c = lane; c < kKeys * v_chunks; c += kWarpSize) {
        const int row = c / v_chunks, col = (c % v_chunks) * kChunk;
        const bool ok = in_block + row < p.slc_len && pos0 + row <= t;
        cp_async_16(v_dst + row * kStride + col, ok ? v + (pos0 + row) * p.v_stride_t + col : v, ok);
      }
    } else {
      for (int e = lane; e < kKeys * p.dk; e += kWarpSize) {
        const int row = e / p.dk, col = e % p.dk;
        const bool ok = in_block + row < p.slc_len && pos0 + row <= t;
        k_dst[row * kStride + col] = ok ? k[(pos0 + row) * p.k_stride_t + col] : zero;
      }
      for (int e = lane; e < kKeys * p.dv; e += kWarpSize) {
        const int row = e / p.dv, col = e % p.dv;
        const bool ok = in_block + row < p.slc_len && pos0 + row <= t;
        v_dst[row * kStride + col] = ok ? v[(pos0 + row) * p.v_stride_t + col] : zero;
      }
    }
  };

  const float scale_log2 = p.scale * kLog2e;
  float acc[kDim / kMmaN][4] = {};  // [kRows, kDim] output accumulator, mma C layout per n8 tile
  float row_max[2] = {kNegInf, kNegInf};  // rows group, group + 8, log2 domain
  float row_sum[2] = {0.0f, 0.0f};        // this thread's share of the rows' sums

  int i = next_tile(warp);
  int stage = 0;
  if (i < total) load_tile(i, stage);
  cp_async_commit();
  while (i < total) {
    const int next = next_tile(i + warps);
    if (next < total) load_tile(next, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // tile i has landed (this thread's copies) ...
    __syncwarp();        // ... and every lane's

    const T* k_s = warp_s + stage * Tile::kStageElems;  // [kKeys, kStride]
    const T* v_s = k_s + kKeys * kStride;               // [kKeys, kStride]
    const int in_block = (i % tiles_per_block) * kKeys;
    const int64_t pos0 = static_cast<int64_t>(idx[i / tiles_per_block]) * p.slc_len + in_block;

    float s[2][4] = {};  // scores [kRows, kKeys] as two n8 tiles
#pragma unroll
    for (int kk = 0; kk < kDim / kMmaK; ++kk) {
      if (kk * kMmaK < p.dk) {
        uint32_t a[4], bk[4];
        ldmatrix_x4(a, q_s + (lane % 16) * kStride + kk * kMmaK + (lane / 16) * 8);  // Q [16, 16]
        ldmatrix_x4(bk, k_s + ((lane % 8) + (lane / 16) * 8) * kStride + kk * kMmaK +
                            ((lane / 8) % 2) * 8);  // K^T [16, 16] as two [16, 8]
        Element<T>::mma(s[0], a, bk[0], bk[1]);
        Element<T>::mma(s[1], a, bk[2], bk[3]);
      }
    }

    float tile_max[2] = {kNegInf, kNegInf};
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = nt * kMmaN + 2 * quad + e % 2;
        const bool ok = in_block + key < p.slc_len && pos0 + key <= t;
        s[nt][e] = ok ? s[nt][e] * scale_log2 : kNegInf;
        tile_max[e / 2] = fmaxf(tile_max[e / 2], s[nt][e]);
      }
    }
    float base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
      const float new_max = fmaxf(row_max[r], tile_max[r]);
      base[r] = new_max == kNegInf ? 0.0f : new_max;
      const float alpha = exp2f(row_max[r] - base[r]);
      row_max[r] = new_max;
      row_sum[r] *= alpha;
#pragma unroll
      for (int j = 0; j < kDim / kMmaN; ++j) {
        acc[j][2 * r] *= alpha;
        acc[j][2 * r + 1] *= alpha;
      }
    }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = exp2f(s[nt][e] - base[e / 2]);
        row_sum[e / 2] += s[nt][e];
      }
    }
    // P [kRows, kKeys] as the A operand: the C layout of the two n8 tiles is A's k16 layout.
    const uint32_t pa[4] = {Element<T>::pack(s[0][0], s[0][1]), Element<T>::pack(s[0][2], s[0][3]),
                            Element<T>::pack(s[1][0], s[1][1]), Element<T>::pack(s[1][2], s[1][3])};
#pragma unroll
    for (int jp = 0; jp < kDim / (2 * kMmaN); ++jp) {
      if (jp * 2 * kMmaN < p.dv) {
        uint32_t bv[4];
        ldmatrix_x4_trans(bv, v_s + ((lane % 8) + ((lane / 8) % 2) * 8) * kStride + jp * 2 * kMmaN +
                                  (lane / 16) * 8);  // V [16 keys, 16 columns] as two [16, 8]
        Element<T>::mma(acc[2 * jp], pa, bv[0], bv[1]);
        Element<T>::mma(acc[2 * jp + 1], pa, bv[2], bv[3]);
      }
    }
    __syncwarp();  // every lane has read buffer `stage` before the next iteration refills it
    stage ^= 1;
    i = next;
  }
  cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
  }
  __syncthreads();  // every warp is done with its buffers: the merge area reuses them
  float* merge_s = reinterpret_cast<float*>(stage_s);  // [warps, kRows, kDim]
  if (quad == 0) {
    max_s[warp * kRows + group] = row_max[0];
    max_s[warp * kRows + group + 8] = row_max[1];
    sum_s[warp * kRows + group] = row_sum[0];
    sum_s[warp * kRows + group + 8] = row_sum[1];
  }
#pragma unroll
  for (int j = 0; j < kDim / kMmaN; ++j) {
    if (j * kMmaN < p.dv) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int row = group + 8 * (e / 2), col = j * kMmaN + 2 * quad + e % 2;
        merge_s[(warp * kRows + row) * kDim + col] = acc[j][e];
      }
    }
  }
  __syncthreads();

  float* o = p.o + b * p.o_stride_b + t * p.o_stride_t + h * p.group * p.o_stride_h;
  for (int e = threadIdx.x; e < p.group * p.dv; e += blockDim.x) {
    const int row = e / p.dv, col = e % p.dv;
    float top = kNegInf;
    for (int w = 0; w < warps; ++w) top = fmaxf(top, max_s[w * kRows + row]);
    float sum = 0.0f, out = 0.0f;
    for (int w = 0; w < warps; ++w) {
      const float m = max_s[w * kRows + row];
      if (m == kNegInf) continue;  // this warp saw no key of the row
      const float f = exp2f(m - top);
      sum += sum_s[w * kRows + row] * f;
      out += merge_s[(w * kRows + row) * kDim + col] * f;
    }
    o[row * p.o_stride_h + col] = sum > 0.0f ? out / sum : 0.0f;
  }
  float* lse = p.lse + b * p.lse_stride_b + t * p.lse_stride_t + h * p.group * p.lse_stride_h;
  for (int row = threadIdx.x; row < p.group; row += blockDim.x) {
    float top = kNegInf;
    for (int w = 0; w < warps; ++w) top = fmaxf(top, max_s[w * kRows + row]);
    float sum = 0.0f;
    for (int w = 0; w < warps; ++w) {
      const float m = max_s[w * kRows + row];
      if (m != kNegInf) sum += sum_s[w * kRows + row] * exp2f(m - top);
    }
    lse[row * p.lse_stride_h] = sum > 0.0f ? (top + log2f(sum)) * kLn2 : kNegInf;
  }
}

// The float32 path, for tests and references (no tensor cores): the same CTA per (token, batch,
// kv head); warp w takes the group's heads w, w + warps, ...; each lane holds the head-dim columns
// lane + 32 j (j < kPerLane) of q and of the output; keys are walked one at a time with float32
// FMAs, a warp-shuffle sum for q.k, and an online softmax in float32 (natural-log domain).
constexpr int kFloat32Warps = 4;  // min blocks 1 below: without it ptxas held kPerLane=1 to 32 registers

template <int kPerLane>
__global__ void __launch_bounds__(kFloat32Warps* kWarpSize, 1)
    selected_attention_fwd_float32(const SelectedParams p) {
  static_assert(kPerLane >= 1 && kPerLane * kWarpSize <= 256, "head dims up to 256");
  constexpr float kNegInf = -__builtin_huge_valf();
  const int warps = blockDim.x / kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;

  const int64_t t = blockIdx.x;
  const int64_t b = blockIdx.y / p.heads_kv;
  const int64_t h = blockIdx.y % p.heads_kv;
  if (t >= p.tokens || b >= p.batch) return;
  const float* k = static_cast<const float*>(p.k) + b * p.k_stride_b + h * p.k_stride_h;
  const float* v = static_cast<const float*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
  const int32_t* idx = p.indices + b * p.idx_stride_b + t * p.idx_stride_t + h * p.idx_stride_h;

  for (int g = warp; g < p.group; g += warps) {
    const int64_t hq = h * p.group + g;
    const float* q =
        static_cast<const float*>(p.q) + b * p.q_stride_b + t * p.q_stride_t + hq * p.q_stride_h;
    float qv[kPerLane];   // q [dk]: this lane's columns
    float acc[kPerLane];  // o [dv]: this lane's columns
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int col = lane + j * kWarpSize;
      qv[j] = col < p.dk ? q[col] : 0.0f;
      acc[j] = 0.0f;
    }
    float row_max = kNegInf, row_sum = 0.0f;
    for (int slot = 0; slot < p.top_n; ++slot) {
      const int64_t blk = idx[slot];
      if (blk < 0) continue;
      const int64_t lo = blk * p.slc_len;
      const int64_t hi = lo + p.slc_len < t + 1 ? lo + p.slc_len : t + 1;  // keys <= t
      for (int64_t pos = lo; pos < hi; ++pos) {
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) {
          const int col = lane + j * kWarpSize;
          if (col < p.dk) s = fmaf(qv[j], k[pos * p.k_stride_t + col], s);
        }
#pragma unroll
        for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
          s += __shfl_xor_sync(0xffffffffu, s, offset);
        }
        s *= p.scale;
        const float new_max = fmaxf(row_max, s);
        const float alpha = expf(row_max - new_max);  // 0 at the first key (row_max = -inf)
        const float weight = expf(s - new_max);
        row_sum = row_sum * alpha + weight;
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) {
          const int col = lane + j * kWarpSize;
          if (col < p.dv) acc[j] = fmaf(weight, v[pos * p.v_stride_t + col], acc[j] * alpha);
        }
        row_max = new_max;
      }
    }
    float* o = p.o + b * p.o_stride_b + t * p.o_stride_t + hq * p.o_stride_h;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int col = lane + j * kWarpSize;
      if (col < p.dv) o[col] = row_sum > 0.0f ? acc[j] / row_sum : 0.0f;
    }
    if (lane == 0) {
      p.lse[b * p.lse_stride_b + t * p.lse_stride_t + hq * p.lse_stride_h] =
          row_sum > 0.0f ? row_max + logf(row_sum) : kNegInf;
    }
  }
}

}  // namespace nsa_cuda
