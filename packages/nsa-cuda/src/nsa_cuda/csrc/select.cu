// Launcher of the selected branch forward: picks the head-dim tile, the load path and the warp
// count from the problem and the device, then launches one CTA per (token, batch, kv head).
// Framework-free: compiled alone by `nox -s cuda-compile` (CI, no GPU) and into the torch extension.
#include <cuda_runtime.h>

#include <cstdint>

#include "params.h"
#include "select.cuh"
#include "select.h"

namespace nsa_cuda {

namespace {

constexpr int kDimTiles[] = {64, 128, 256};  // head dims are padded to the first that holds max(dk, dv)
constexpr int kMaxGridY = 65535;
static_assert(kMaxGroup == kRows, "select.h's group limit is one CTA's query rows");
static_assert(kMaxHeadDim == kDimTiles[2], "select.h's head-dim limit is the largest tile");
static_assert(kMaxHeadDim == 8 * kWarpSize, "the float32 path holds 8 columns per lane at most");

bool aligned(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % kCopyBytes == 0; }

// cp.async moves 16-byte chunks: every row of k and v must start on a 16-byte boundary.
bool vector_loads_ok(const SelectedParams& p) {
  const int64_t strides[] = {p.k_stride_b, p.k_stride_t, p.k_stride_h,
                             p.v_stride_b, p.v_stride_t, p.v_stride_h};
  bool ok = p.dk % kChunk == 0 && p.dv % kChunk == 0 && aligned(p.k) && aligned(p.v);
  for (int64_t s : strides) ok = ok && s % kChunk == 0;
  return ok;
}

template <typename T, int kDim>
cudaError_t launch(const SelectedParams& p, cudaStream_t stream) {
  using Tile = SelectedTile<kDim>;
  int device = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  int warps = kMaxWarps;  // fewer warps where shared memory is short (sm_86/sm_89: 99 KiB)
  while (warps > 1 && Tile::bytes(warps) > static_cast<size_t>(optin)) warps /= 2;
  const size_t smem = Tile::bytes(warps);
  if (smem > static_cast<size_t>(optin)) return cudaErrorInvalidConfiguration;
  auto kernel = selected_attention_fwd<T, kDim>;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(p.tokens), static_cast<unsigned>(p.batch * p.heads_kv));
  kernel<<<grid, warps * kWarpSize, smem, stream>>>(p, vector_loads_ok(p));
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_dtype(const SelectedParams& p, cudaStream_t stream) {
  const int dim = p.dk > p.dv ? p.dk : p.dv;
  if (dim <= kDimTiles[0]) return launch<T, kDimTiles[0]>(p, stream);
  if (dim <= kDimTiles[1]) return launch<T, kDimTiles[1]>(p, stream);
  if (dim <= kDimTiles[2]) return launch<T, kDimTiles[2]>(p, stream);
  return cudaErrorInvalidValue;
}

// The float32 path: kPerLane = head-dim columns per lane, the fewest that hold max(dk, dv).
template <int kPerLane>
cudaError_t launch_float32_lanes(const SelectedParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(p.tokens), static_cast<unsigned>(p.batch * p.heads_kv));
  selected_attention_fwd_float32<kPerLane><<<grid, kFloat32Warps * kWarpSize, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_float32(const SelectedParams& p, cudaStream_t stream) {
  const int dim = p.dk > p.dv ? p.dk : p.dv;
  if (dim <= kWarpSize) return launch_float32_lanes<1>(p, stream);
  if (dim <= 2 * kWarpSize) return launch_float32_lanes<2>(p, stream);
  if (dim <= 4 * kWarpSize) return launch_float32_lanes<4>(p, stream);
  if (dim <= 8 * kWarpSize) return launch_float32_lanes<8>(p, stream);
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t selected_attention_forward(const SelectedParams& p, cudaStream_t stream) {
  if (p.group < 1 || p.group > kRows || p.dk < 1 || p.dv < 1 || p.slc_len < 1 || p.top_n < 1 ||
      p.tokens < 1 || p.batch < 1 || p.heads_kv < 1 ||
      static_cast<int64_t>(p.batch) * p.heads_kv > kMaxGridY) {
    return cudaErrorInvalidValue;
  }
  switch (p.dtype) {
    case DType::kBFloat16:
      return launch_dtype<__nv_bfloat16>(p, stream);
    case DType::kFloat16:
      return launch_dtype<__half>(p, stream);
    case DType::kFloat32:
      return launch_float32(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace nsa_cuda
