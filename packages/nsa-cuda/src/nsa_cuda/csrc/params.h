// The one plain struct that crosses the boundary between a framework binding and the kernels.
// No framework types: pointers, int64 strides in elements, sizes and the softmax scale.
#pragma once

#include <cstdint>

namespace nsa_cuda {

enum class DType : int32_t { kBFloat16 = 0, kFloat16 = 1, kFloat32 = 2 };

// The selected branch (Eq. 12) of one batch of equal-length sequences.
// q [B, T, HQ, dk], k [B, T, H, dk], v [B, T, H, dv] in `dtype` (float32 takes the CUDA-core
// path); indices [B, T, H, n] int32, ascending, -1 padded; o [B, T, HQ, dv] and lse [B, T, HQ]
// float32 (they may be strided views).
// The last dim of every array has unit stride. HQ = H * group.
struct SelectedParams {
  const void* q;
  const void* k;
  const void* v;
  const int32_t* indices;
  float* o;
  float* lse;

  int64_t q_stride_b, q_stride_t, q_stride_h;
  int64_t k_stride_b, k_stride_t, k_stride_h;
  int64_t v_stride_b, v_stride_t, v_stride_h;
  int64_t idx_stride_b, idx_stride_t, idx_stride_h;
  int64_t o_stride_b, o_stride_t, o_stride_h;
  int64_t lse_stride_b, lse_stride_t, lse_stride_h;

  int32_t batch;
  int32_t tokens;
  int32_t heads_kv;
  int32_t group;    // G = HQ / H, 1 <= G <= kRows
  int32_t dk;
  int32_t dv;
  int32_t top_n;    // n, slots per (token, kv head) in indices
  int32_t slc_len;  // l'
  float scale;      // softmax scale applied to q.k
  DType dtype;
};

}  // namespace nsa_cuda
