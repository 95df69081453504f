// attention on CPU: checks, allocation, and the call into the kernels of the best CPU
// capability (attention_cpu_kernels.h).
#include <torch/library.h>

#include "../common/cpu_capability.h"
#include "attention_torch.h"

namespace bertfast {
BERTFAST_DECLARE_CPU_COPIES(
    void attention_fwd(const AttentionFwdArgs& a, DType dtype);
    void attention_bwd(const AttentionBwdArgs& a, DType dtype);)

namespace {

// The kernels tile head_dim by whole vectors: the AVX-512 copy (16 floats) takes multiples of
// 16, the AVX2 and baseline copies (8 floats) any multiple of 8.
CpuCapability attention_capability(int64_t head_dim) {
  const CpuCapability best = cpu_capability_in_use();
  return best == CpuCapability::kAVX512 && head_dim % 16 != 0 ? CpuCapability::kAVX2 : best;
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     const std::optional<at::Tensor>& key_padding_mask,
                                                     const std::optional<at::Tensor>& attn_bias,
                                                     const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen,
                                                     const std::optional<at::Tensor>& seed, double dropout_p,
                                                     double scale, bool /*deterministic*/) {
  const AttentionInputs in = check_attention_inputs(q, k, v, key_padding_mask, attn_bias, cu_seqlens, max_seqlen);
  AttentionFwdCall c = prepare_attention_fwd(in, seed, dropout_p, scale);
  if (!c.empty) {
    BERTFAST_CPU_DISPATCH_TO(attention_capability(in.head_dim), attention_fwd, c.args, to_dtype(in.q.scalar_type()));
  }
  return {c.out, c.lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_bwd_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out_in, const at::Tensor& lse, const std::optional<at::Tensor>& key_padding_mask,
    const std::optional<at::Tensor>& attn_bias, const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen,
    const std::optional<at::Tensor>& seed, double dropout_p, double scale, bool want_grad_bias,
    bool /*deterministic: the CPU backward always is*/) {
  const AttentionInputs in = check_attention_inputs(q, k, v, key_padding_mask, attn_bias, cu_seqlens, max_seqlen);
  check_seed(seed, dropout_p, in.q, "attention");
  const at::Tensor grad_out = last_dim_contiguous(grad_out_in), out = last_dim_contiguous(out_in);
  AttentionBwdCall c = prepare_attention_bwd(in, grad_out, out, lse, seed, dropout_p, scale, want_grad_bias,
                                             /*deterministic=*/true, /*zero_grad_q=*/false);
  if (!c.empty) {
    BERTFAST_CPU_DISPATCH_TO(attention_capability(in.head_dim), attention_bwd, c.args, to_dtype(in.q.scalar_type()));
  }
  return {c.grad_q, c.grad_k, c.grad_v, c.grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(bertfast, CPU, m) {
  m.impl("attention_fwd", &attention_fwd_cpu);
  m.impl("attention_bwd", &attention_bwd_cpu);
}

}  // namespace bertfast
