// Checks and argument blocks shared by the CPU and CUDA glue of attention. The Python
// wrappers (bertfast/ops/attention.py) give friendlier messages first; these guard direct
// torch.ops.bertfast calls so that no input can crash the process.
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "../common/torch_utils.h"
#include "attention.h"

namespace bertfast {

// The tensors of one attention call, made kernel-ready (last dimension contiguous, mask and
// cu_seqlens contiguous) and checked.
struct AttentionInputs {
  at::Tensor q, k, v;
  std::optional<at::Tensor> key_mask, bias, cu_seqlens;
  bool varlen = false;
  int64_t batch = 0, seq_q = 0, seq_k = 0, heads = 0, head_dim = 0, total_q = 0;
};

inline at::Tensor last_dim_contiguous(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

inline AttentionInputs check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                              const std::optional<at::Tensor>& key_mask,
                                              const std::optional<at::Tensor>& bias,
                                              const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen) {
  AttentionInputs in;
  in.varlen = cu_seqlens.has_value();
  const int64_t rank = in.varlen ? 3 : 4;
  const char* layout = in.varlen ? "(total, heads, head_dim)" : "(batch, seq, heads, head_dim)";
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"q", &q}, {"k", &k}, {"v", &v}}) {
    TORCH_CHECK_VALUE(t->dim() == rank, "attention: ", name, " must have shape ", layout, ", got ", t->sizes());
  }
  TORCH_CHECK_VALUE(k.sizes() == v.sizes(), "attention: k and v must have the same shape, got ", k.sizes(), " and ",
              v.sizes());
  TORCH_CHECK_VALUE(k.size(-1) == q.size(-1) && k.size(-2) == q.size(-2) && (in.varlen || k.size(0) == q.size(0)),
              "attention: q ", q.sizes(), " and k ", k.sizes(), " disagree on batch, heads or head_dim");
  TORCH_CHECK_VALUE(!in.varlen || k.size(0) == q.size(0), "attention_varlen: q and k must hold the same tokens, got ",
              q.size(0), " and ", k.size(0));
  check_float_dtype(q, "q", "attention");
  TORCH_CHECK_TYPE(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "attention: q, k and v must share a dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
              v.scalar_type());
  check_same_device(k, "k", q, "q", "attention");
  check_same_device(v, "v", q, "q", "attention");
  in.heads = q.size(-2);
  in.head_dim = q.size(-1);
  TORCH_CHECK(attention_head_dim_supported(in.head_dim),
              "attention: head_dim must be a multiple of 8 between 8 and 128, got ", in.head_dim);
  in.q = last_dim_contiguous(q);
  in.k = last_dim_contiguous(k);
  in.v = last_dim_contiguous(v);
  if (in.varlen) {
    const at::Tensor& cu = *cu_seqlens;
    TORCH_CHECK(cu.scalar_type() == at::kInt && cu.dim() == 1 && cu.size(0) >= 2,
                "attention_varlen: cu_seqlens must be a 1-D int32 tensor of batch + 1 offsets, got ",
                cu.scalar_type(), " of shape ", cu.sizes());
    check_same_device(cu, "cu_seqlens", q, "q", "attention_varlen");
    TORCH_CHECK(!key_mask.has_value() && !bias.has_value(),
                "attention_varlen: key_padding_mask and attn_bias are not supported with cu_seqlens");
    TORCH_CHECK(max_seqlen >= 1, "attention_varlen: max_seqlen must be >= 1, got ", max_seqlen);
    in.cu_seqlens = cu.contiguous();
    in.batch = cu.size(0) - 1;
    in.seq_q = in.seq_k = max_seqlen;
    in.total_q = q.size(0);
    if (cu.device().is_cpu()) {  // values are checked where reading them costs no device sync
      const int32_t* c = in.cu_seqlens->data_ptr<int32_t>();
      TORCH_CHECK(c[0] == 0, "attention_varlen: cu_seqlens must start at 0, got ", c[0]);
      for (int64_t b = 0; b < in.batch; ++b) {
        TORCH_CHECK(c[b + 1] >= c[b], "attention_varlen: cu_seqlens must be non-decreasing, got ", c[b], " then ",
                    c[b + 1], " at index ", b);
        TORCH_CHECK(c[b + 1] - c[b] <= max_seqlen, "attention_varlen: sequence ", b, " has ", c[b + 1] - c[b],
                    " tokens, more than max_seqlen = ", max_seqlen);
      }
      TORCH_CHECK(c[in.batch] == in.total_q, "attention_varlen: cu_seqlens must end at the number of tokens ",
                  in.total_q, ", got ", c[in.batch]);
    }
    return in;
  }
  in.batch = q.size(0);
  in.seq_q = q.size(1);
  in.seq_k = k.size(1);
  in.total_q = in.batch * in.seq_q;
  if (key_mask.has_value()) {
    const at::Tensor& m = *key_mask;
    TORCH_CHECK(m.scalar_type() == at::kBool && m.dim() == 2 && m.size(0) == in.batch && m.size(1) == in.seq_k,
                "attention: key_padding_mask must be bool of shape (", in.batch, ", ", in.seq_k, "), got ",
                m.scalar_type(), " of shape ", m.sizes());
    check_same_device(m, "key_padding_mask", q, "q", "attention");
    in.key_mask = m.contiguous();
  }
  if (bias.has_value()) {
    const at::Tensor& bt = *bias;
    TORCH_CHECK(bt.dim() == 4 && bt.size(0) == in.batch && bt.size(1) == in.heads && bt.size(2) == in.seq_q &&
                    bt.size(3) == in.seq_k,
                "attention: attn_bias must be (expanded to) shape (", in.batch, ", ", in.heads, ", ", in.seq_q, ", ",
                in.seq_k, "), got ", bt.sizes());
    TORCH_CHECK(bt.scalar_type() == at::kFloat || bt.scalar_type() == q.scalar_type(),
                "attention: attn_bias must be float32 or q's dtype ", q.scalar_type(), ", got ", bt.scalar_type());
    check_same_device(bt, "attn_bias", q, "q", "attention");
    in.bias = bt;
  }
  return in;
}

inline AttentionTensor attention_tensor(const at::Tensor& t) {
  AttentionTensor a;
  a.data = t.data_ptr();
  if (t.dim() == 4) {
    a.batch_stride = t.stride(0);
    a.token_stride = t.stride(1);
    a.head_stride = t.stride(2);
  } else {
    a.token_stride = t.stride(0);
    a.head_stride = t.stride(1);
  }
  return a;
}

inline AttentionProblem attention_problem(const AttentionInputs& in, const std::optional<at::Tensor>& seed,
                                          double dropout_p, double scale) {
  AttentionProblem p;
  p.batch = in.batch;
  p.heads = in.heads;
  p.head_dim = in.head_dim;
  p.seq_q = in.seq_q;
  p.seq_k = in.seq_k;
  p.total_q = in.total_q;
  p.cu_seqlens = in.cu_seqlens ? in.cu_seqlens->data_ptr<int32_t>() : nullptr;
  p.key_mask = in.key_mask ? in.key_mask->data_ptr<bool>() : nullptr;
  if (in.bias) {
    const at::Tensor& bt = *in.bias;
    p.bias = bt.data_ptr();
    p.bias_dtype = to_dtype(bt.scalar_type());
    p.bias_stride_b = bt.stride(0);
    p.bias_stride_h = bt.stride(1);
    p.bias_stride_q = bt.stride(2);
    p.bias_stride_k = bt.stride(3);
  }
  p.scale = static_cast<float>(scale);
  if (dropout_p > 0) {
    p.seed = seed->data_ptr<int64_t>();
    p.threshold = dropout_threshold(dropout_p);
    p.dropout_scale = dropout_scale(dropout_p);
  }
  p.counter_q = in.seq_q;
  p.counter_k = in.seq_k;
  return p;
}

// The output / gradient of q, k or v: contiguous, q's dtype.
inline at::Tensor attention_out_like(const at::Tensor& t) { return empty_output(t.sizes(), t.options()); }

inline void check_attention_saved(const AttentionInputs& in, const at::Tensor& grad_out, const at::Tensor& out,
                                  const at::Tensor& lse) {
  const char* op = "attention backward";
  check_same_device(grad_out, "grad_out", in.q, "q", op);
  check_same_device(out, "out", in.q, "q", op);
  check_same_device(lse, "lse", in.q, "q", op);
  TORCH_CHECK_VALUE(grad_out.sizes() == in.q.sizes() && grad_out.scalar_type() == in.q.scalar_type(), op,
                    ": grad_out must match the output (", in.q.sizes(), ", ", in.q.scalar_type(), "), got ",
                    grad_out.sizes(), ", ", grad_out.scalar_type());
  TORCH_CHECK_VALUE(out.sizes() == in.q.sizes() && out.scalar_type() == in.q.scalar_type() && out.stride(-1) == 1,
                    op, ": out must be the forward's output (", in.q.sizes(), ", ", in.q.scalar_type(),
                    ", last dimension contiguous), got ", out.sizes(), ", ", out.scalar_type(), " with strides ",
                    out.strides());
  TORCH_CHECK_VALUE(lse.scalar_type() == at::kFloat && lse.dim() == 2 && lse.size(0) == in.heads &&
                        lse.size(1) == in.total_q && lse.is_contiguous(),
                    op, ": lse must be contiguous float32 of shape (", in.heads, ", ", in.total_q, "), got ",
                    lse.scalar_type(), " of shape ", lse.sizes());
}

// The forward's output and row log-sum-exp, and the kernel arguments pointing at them.
struct AttentionFwdCall {
  at::Tensor out, lse;
  AttentionFwdArgs args;
  bool empty = false;  // nothing to compute
};

inline AttentionFwdCall prepare_attention_fwd(const AttentionInputs& in, const std::optional<at::Tensor>& seed,
                                              double dropout_p, double scale) {
  check_seed(seed, dropout_p, in.q, "attention");
  AttentionFwdCall c;
  c.out = attention_out_like(in.q);
  c.lse = at::empty({in.heads, in.total_q}, in.q.options().dtype(at::kFloat));
  c.empty = in.q.numel() == 0 || in.batch == 0;
  if (c.empty) return c;
  AttentionFwdArgs& a = c.args;
  a.p = attention_problem(in, seed, dropout_p, scale);
  a.q = attention_tensor(in.q);
  a.k = attention_tensor(in.k);
  a.v = attention_tensor(in.v);
  a.out = attention_tensor(c.out);
  a.lse = c.lse.data_ptr<float>();
  return c;
}

// The backward's gradients and the kernel arguments pointing at them, shared by the CPU and
// CUDA glue. grad_k and grad_v start at zero (masked keys get no gradient); grad_q too when
// zero_grad_q (the CUDA kernels leave rows outside every clamped sequence untouched).
struct AttentionBwdCall {
  at::Tensor grad_q, grad_k, grad_v, grad_bias;
  AttentionBwdArgs args;
  bool empty = false;  // nothing to compute: the zero/empty gradients are the answer
};

inline AttentionBwdCall prepare_attention_bwd(const AttentionInputs& in, const at::Tensor& grad_out,
                                              const at::Tensor& out, const at::Tensor& lse,
                                              const std::optional<at::Tensor>& seed, double dropout_p, double scale,
                                              bool want_grad_bias, bool deterministic, bool zero_grad_q) {
  check_attention_saved(in, grad_out, out, lse);
  TORCH_CHECK(!want_grad_bias || in.bias.has_value(), "attention backward: want_grad_bias needs attn_bias");
  AttentionBwdCall c;
  c.grad_q = zero_grad_q ? zeros_output(in.q.sizes(), in.q.options()) : attention_out_like(in.q);
  c.grad_k = zeros_output(in.k.sizes(), in.k.options());
  c.grad_v = zeros_output(in.v.sizes(), in.v.options());
  c.grad_bias = want_grad_bias ? zeros_output({in.batch, in.heads, in.seq_q, in.seq_k}, in.q.options().dtype(at::kFloat))
                               : at::empty({0}, in.q.options().dtype(at::kFloat));
  c.empty = in.q.numel() == 0 || in.batch == 0;
  if (c.empty) return c;
  AttentionBwdArgs& a = c.args;
  a.p = attention_problem(in, seed, dropout_p, scale);
  a.q = attention_tensor(in.q);
  a.k = attention_tensor(in.k);
  a.v = attention_tensor(in.v);
  a.out = attention_tensor(out);
  a.grad_out = attention_tensor(grad_out);
  a.grad_q = attention_tensor(c.grad_q);
  a.grad_k = attention_tensor(c.grad_k);
  a.grad_v = attention_tensor(c.grad_v);
  a.lse = lse.data_ptr<float>();
  a.grad_bias = want_grad_bias ? c.grad_bias.data_ptr<float>() : nullptr;
  a.deterministic = deterministic;
  return c;
}

}  // namespace bertfast
