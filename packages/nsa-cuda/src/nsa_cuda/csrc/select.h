// Host entry of the selected branch forward (select.cu), for any binding.
#pragma once

#include <cuda_runtime.h>

#include "params.h"

namespace nsa_cuda {

constexpr int kMaxGroup = 16;   // G: the query rows of one CTA (select.cuh kRows)
constexpr int kMaxHeadDim = 256;  // dk, dv: the largest head-dim tile

// Writes p.o and p.lse on `stream`. Returns cudaErrorInvalidValue for a problem outside
// 1 <= G <= kMaxGroup, dk, dv <= kMaxHeadDim, B * H <= 65535, else the launch's error.
cudaError_t selected_attention_forward(const SelectedParams& p, cudaStream_t stream);

}  // namespace nsa_cuda
