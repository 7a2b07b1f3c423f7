// The torch binding: tensors -> SelectedParams -> select.cu, on the current stream and device.
// Inputs are validated in Python first (nsa_cuda.ops.select, with the project's errors); the checks
// here only stop a call that bypassed it from reading out of bounds.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "params.h"
#include "select.h"

namespace {

void check_rows(const at::Tensor& x, const char* name, int64_t dims) {
  TORCH_CHECK(x.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(x.dim() == dims, name, " must have ", dims, " dims");
  TORCH_CHECK(x.stride(-1) == 1, name, " must have unit stride in its last dim");
}

void selected_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& indices, const at::Tensor& o, const at::Tensor& lse,
                        int64_t slc_len, double scale) {
  check_rows(q, "q", 4);
  check_rows(k, "k_slc", 4);
  check_rows(v, "v_slc", 4);
  check_rows(indices, "indices", 4);
  check_rows(o, "o", 4);
  TORCH_CHECK(lse.is_cuda() && lse.dim() == 3, "lse must be a 3-dim CUDA tensor");
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kHalf || dtype == at::kFloat,
              "q must be bfloat16, float16 or float32");
  TORCH_CHECK(k.scalar_type() == dtype && v.scalar_type() == dtype, "k_slc and v_slc must have q's dtype");
  TORCH_CHECK(indices.scalar_type() == at::kInt, "indices must be int32");
  TORCH_CHECK(o.scalar_type() == at::kFloat && lse.scalar_type() == at::kFloat, "o and lse must be float32");
  const int64_t B = q.size(0), T = q.size(1), HQ = q.size(2), H = k.size(2);
  TORCH_CHECK(H > 0 && HQ % H == 0, "HQ must be a multiple of H");
  TORCH_CHECK(k.size(0) == B && k.size(1) == T && k.size(3) == q.size(3), "k_slc must be [B, T, H, dk]");
  TORCH_CHECK(v.size(0) == B && v.size(1) == T && v.size(2) == H, "v_slc must be [B, T, H, dv]");
  TORCH_CHECK(indices.size(0) == B && indices.size(1) == T && indices.size(2) == H,
              "indices must be [B, T, H, n]");
  TORCH_CHECK(o.size(0) == B && o.size(1) == T && o.size(2) == HQ && o.size(3) == v.size(3),
              "o must be [B, T, HQ, dv]");
  TORCH_CHECK(lse.size(0) == B && lse.size(1) == T && lse.size(2) == HQ, "lse must be [B, T, HQ]");
  for (const at::Tensor* x : {&k, &v, &indices, &o, &lse}) {
    TORCH_CHECK(x->device() == q.device(), "every tensor must be on q's device");
  }

  if (B == 0 || T == 0 || HQ == 0) return;

  nsa_cuda::SelectedParams p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.indices = indices.data_ptr<int32_t>();
  p.o = o.data_ptr<float>();
  p.lse = lse.data_ptr<float>();
  p.q_stride_b = q.stride(0), p.q_stride_t = q.stride(1), p.q_stride_h = q.stride(2);
  p.k_stride_b = k.stride(0), p.k_stride_t = k.stride(1), p.k_stride_h = k.stride(2);
  p.v_stride_b = v.stride(0), p.v_stride_t = v.stride(1), p.v_stride_h = v.stride(2);
  p.idx_stride_b = indices.stride(0), p.idx_stride_t = indices.stride(1), p.idx_stride_h = indices.stride(2);
  p.o_stride_b = o.stride(0), p.o_stride_t = o.stride(1), p.o_stride_h = o.stride(2);
  p.lse_stride_b = lse.stride(0), p.lse_stride_t = lse.stride(1), p.lse_stride_h = lse.stride(2);
  p.batch = static_cast<int32_t>(B);
  p.tokens = static_cast<int32_t>(T);
  p.heads_kv = static_cast<int32_t>(H);
  p.group = static_cast<int32_t>(HQ / H);
  p.dk = static_cast<int32_t>(q.size(3));
  p.dv = static_cast<int32_t>(v.size(3));
  p.top_n = static_cast<int32_t>(indices.size(3));
  p.slc_len = static_cast<int32_t>(slc_len);
  p.scale = static_cast<float>(scale);
  p.dtype = dtype == at::kBFloat16 ? nsa_cuda::DType::kBFloat16
            : dtype == at::kHalf    ? nsa_cuda::DType::kFloat16
                                    : nsa_cuda::DType::kFloat32;

  const c10::cuda::CUDAGuard guard(q.device());
  const cudaError_t err = nsa_cuda::selected_attention_forward(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "nsa-cuda selected_attention_forward failed: ", cudaGetErrorString(err));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("selected_attention", &selected_attention,
        "Selected branch forward: writes o [B, T, HQ, dv] and lse [B, T, HQ] (float32)");
}
