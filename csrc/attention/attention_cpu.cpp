// attention on CPU: checks, allocation, and the call into the kernels of the best CPU
// capability (attention_cpu_kernels.h).
#include <torch/library.h>

#include "../common/cpu_capability.h"
#include "attention_torch.h"

namespace bertfast {
namespace AVX2 {
void attention_fwd(const AttentionFwdArgs& a, DType dtype);
void attention_bwd(const AttentionBwdArgs& a, DType dtype);
}  // namespace AVX2
namespace DEFAULT {
void attention_fwd(const AttentionFwdArgs& a, DType dtype);
void attention_bwd(const AttentionBwdArgs& a, DType dtype);
}  // namespace DEFAULT

namespace {

std::tuple<at::Tensor, at::Tensor> attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     const std::optional<at::Tensor>& key_padding_mask,
                                                     const std::optional<at::Tensor>& attn_bias,
                                                     const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen,
                                                     const std::optional<at::Tensor>& seed, double dropout_p,
                                                     double scale, bool /*deterministic*/) {
  const AttentionInputs in = check_attention_inputs(q, k, v, key_padding_mask, attn_bias, cu_seqlens, max_seqlen);
  check_seed(seed, dropout_p, in.q, "attention");
  at::Tensor out = attention_out_like(in.q);
  at::Tensor lse = at::empty({in.heads, in.total_q}, in.q.options().dtype(at::kFloat));
  if (in.q.numel() == 0) return {out, lse};
  AttentionFwdArgs a;
  a.p = attention_problem(in, seed, dropout_p, scale);
  a.q = attention_tensor(in.q);
  a.k = attention_tensor(in.k);
  a.v = attention_tensor(in.v);
  a.out = attention_tensor(out);
  a.lse = lse.data_ptr<float>();
  BERTFAST_CPU_DISPATCH(attention_fwd, a, to_dtype(in.q.scalar_type()));
  return {out, lse};
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
  check_attention_saved(in, grad_out, out, lse);
  TORCH_CHECK(!want_grad_bias || in.bias.has_value(), "attention backward: want_grad_bias needs attn_bias");
  at::Tensor grad_q = attention_out_like(in.q);
  at::Tensor grad_k = at::zeros(in.k.sizes(), in.k.options());  // masked keys get no gradient
  at::Tensor grad_v = at::zeros(in.v.sizes(), in.v.options());
  at::Tensor grad_bias = want_grad_bias
                             ? at::zeros({in.batch, in.heads, in.seq_q, in.seq_k}, in.q.options().dtype(at::kFloat))
                             : at::empty({0}, in.q.options().dtype(at::kFloat));
  if (in.q.numel() == 0) return {grad_q, grad_k, grad_v, grad_bias};
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
  a.deterministic = true;
  BERTFAST_CPU_DISPATCH(attention_bwd, a, to_dtype(in.q.scalar_type()));
  return {grad_q, grad_k, grad_v, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(bertfast, CPU, m) {
  m.impl("attention_fwd", &attention_fwd_cpu);
  m.impl("attention_bwd", &attention_bwd_cpu);
}

}  // namespace bertfast
