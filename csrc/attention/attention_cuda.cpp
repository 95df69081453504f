// attention on CUDA: checks, allocation, and the launch of the torch-free kernels
// (attention_kernels.cu) on the current stream.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "attention_torch.h"

namespace bertfast {
namespace {

// The kernels read rows with 16-byte loads: strides in multiples of 8 elements, data aligned.
at::Tensor aligned_for_kernels(const at::Tensor& t) {
  bool ok = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) ok = ok && (t.stride(d) % 8 == 0 || t.size(d) == 1);
  return ok ? t : t.contiguous();
}

void check_cuda_inputs(AttentionInputs& in) {
  TORCH_CHECK(in.q.scalar_type() == at::kHalf || in.q.scalar_type() == at::kBFloat16,
              "attention: the CUDA kernels take float16 or bfloat16 inputs, got ", in.q.scalar_type(),
              "; cast q, k and v (or run under torch.autocast)");
  TORCH_CHECK(in.batch <= 65535 && in.heads <= 65535, "attention: batch and heads must be at most 65535 on CUDA");
  in.q = aligned_for_kernels(in.q);
  in.k = aligned_for_kernels(in.k);
  in.v = aligned_for_kernels(in.v);
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_cuda_op(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v,
                                                         const std::optional<at::Tensor>& key_padding_mask,
                                                         const std::optional<at::Tensor>& attn_bias,
                                                         const std::optional<at::Tensor>& cu_seqlens,
                                                         int64_t max_seqlen, const std::optional<at::Tensor>& seed,
                                                         double dropout_p, double scale, bool /*deterministic*/) {
  AttentionInputs in = check_attention_inputs(q, k, v, key_padding_mask, attn_bias, cu_seqlens, max_seqlen);
  check_cuda_inputs(in);
  const c10::cuda::CUDAGuard guard(in.q.device());
  AttentionFwdCall c = prepare_attention_fwd(in, seed, dropout_p, scale);
  if (c.empty) return {c.out, c.lse};
  const cudaError_t err = attention_fwd_cuda(c.args, to_dtype(in.q.scalar_type()), at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "attention: CUDA forward failed: ", cudaGetErrorString(err));
  return {c.out, c.lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_bwd_cuda_op(
    const at::Tensor& grad_out_in, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out_in, const at::Tensor& lse, const std::optional<at::Tensor>& key_padding_mask,
    const std::optional<at::Tensor>& attn_bias, const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen,
    const std::optional<at::Tensor>& seed, double dropout_p, double scale, bool want_grad_bias,
    bool deterministic) {
  AttentionInputs in = check_attention_inputs(q, k, v, key_padding_mask, attn_bias, cu_seqlens, max_seqlen);
  check_cuda_inputs(in);
  check_seed(seed, dropout_p, in.q, "attention");
  const at::Tensor grad_out = aligned_for_kernels(last_dim_contiguous(grad_out_in));
  const at::Tensor out = aligned_for_kernels(last_dim_contiguous(out_in));
  const c10::cuda::CUDAGuard guard(in.q.device());
  // deterministic is recorded only: the kernels use no atomics, so every mode is deterministic
  AttentionBwdCall c = prepare_attention_bwd(in, grad_out, out, lse, seed, dropout_p, scale, want_grad_bias,
                                             deterministic, /*zero_grad_q=*/true);
  if (c.empty) return {c.grad_q, c.grad_k, c.grad_v, c.grad_bias};
  at::Tensor workspace = at::empty({attention_bwd_cuda_workspace_bytes(c.args)}, in.q.options().dtype(at::kByte));
  const cudaError_t err = attention_bwd_cuda(c.args, to_dtype(in.q.scalar_type()), workspace.data_ptr(),
                                             at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "attention: CUDA backward failed: ", cudaGetErrorString(err));
  return {c.grad_q, c.grad_k, c.grad_v, c.grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(bertfast, CUDA, m) {
  m.impl("attention_fwd", &attention_fwd_cuda_op);
  m.impl("attention_bwd", &attention_bwd_cuda_op);
}

}  // namespace bertfast
