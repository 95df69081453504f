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
  check_seed(seed, dropout_p, in.q, "attention");
  const c10::cuda::CUDAGuard guard(in.q.device());
  at::Tensor out = attention_out_like(in.q);
  at::Tensor lse = at::empty({in.heads, in.total_q}, in.q.options().dtype(at::kFloat));
  if (in.q.numel() == 0 || in.batch == 0) return {out, lse};
  AttentionFwdArgs a;
  a.p = attention_problem(in, seed, dropout_p, scale);
  a.q = attention_tensor(in.q);
  a.k = attention_tensor(in.k);
  a.v = attention_tensor(in.v);
  a.out = attention_tensor(out);
  a.lse = lse.data_ptr<float>();
  const cudaError_t err = attention_fwd_cuda(a, to_dtype(in.q.scalar_type()), at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "attention: CUDA forward failed: ", cudaGetErrorString(err));
  return {out, lse};
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
  check_attention_saved(in, grad_out, out, lse);
  TORCH_CHECK(!want_grad_bias || in.bias.has_value(), "attention backward: want_grad_bias needs attn_bias");
  const c10::cuda::CUDAGuard guard(in.q.device());
  // Zero-filled: rows outside every (clamped) sequence keep a zero gradient.
  at::Tensor grad_q = at::zeros(in.q.sizes(), in.q.options());
  at::Tensor grad_k = at::zeros(in.k.sizes(), in.k.options());
  at::Tensor grad_v = at::zeros(in.v.sizes(), in.v.options());
  at::Tensor grad_bias = want_grad_bias
                             ? at::zeros({in.batch, in.heads, in.seq_q, in.seq_k}, in.q.options().dtype(at::kFloat))
                             : at::empty({0}, in.q.options().dtype(at::kFloat));
  if (in.q.numel() == 0 || in.batch == 0) return {grad_q, grad_k, grad_v, grad_bias};
  AttentionBwdArgs a;
  a.p = attention_problem(in, seed, dropout_p, scale);
  a.q = attention_tensor(in.q);
  a.k = attention_tensor(in.k);
  a.v = attention_tensor(in.v);
  a.out = attention_tensor(out);
  a.grad_out = attention_tensor(grad_out);
  a.grad_q = attention_tensor(grad_q);
  a.grad_k = attention_tensor(grad_k);
  a.grad_v = attention_tensor(grad_v);
  a.lse = lse.data_ptr<float>();
  a.grad_bias = want_grad_bias ? grad_bias.data_ptr<float>() : nullptr;
  a.deterministic = deterministic;  // the kernels use no atomics: every mode is deterministic
  at::Tensor workspace = at::empty({attention_bwd_cuda_workspace_bytes(a)}, in.q.options().dtype(at::kByte));
  const cudaError_t err = attention_bwd_cuda(a, to_dtype(in.q.scalar_type()), workspace.data_ptr(),
                                             at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "attention: CUDA backward failed: ", cudaGetErrorString(err));
  return {grad_q, grad_k, grad_v, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(bertfast, CUDA, m) {
  m.impl("attention_fwd", &attention_fwd_cuda_op);
  m.impl("attention_bwd", &attention_bwd_cuda_op);
}

}  // namespace bertfast
