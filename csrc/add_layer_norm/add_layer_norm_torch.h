// Checks and allocation shared by the CPU and CUDA glue of add_layer_norm. The Python
// wrapper (bertfast/ops/add_layer_norm.py) gives friendlier messages first; these guard
// direct torch.ops.bertfast calls so that no input can crash the process.
#pragma once
#include <ATen/ATen.h>

#include "../common/torch_utils.h"
#include "add_layer_norm.h"

namespace bertfast {

inline void check_param(const at::Tensor& t, const char* name, const at::Tensor& x, at::ScalarType param_dtype) {
  const int64_t hidden = x.size(-1);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == hidden, "add_layer_norm: ", name, " must have shape (", hidden,
              ",), got ", t.sizes());
  check_same_device(t, name, x, "x", "add_layer_norm");
  TORCH_CHECK(t.scalar_type() == param_dtype, "add_layer_norm: ", name, " has dtype ", t.scalar_type(),
              ", expected ", param_dtype, " like weight");
}

// Parameters are either in the activation dtype or float32 (autocast keeps fp32 parameters).
inline void check_add_layer_norm_inputs(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                                        const at::Tensor& bias, const std::optional<at::Tensor>& x_bias) {
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) >= 1, "add_layer_norm: x must have shape (..., hidden) with hidden >= 1, got ",
                    x.sizes());
  TORCH_CHECK(residual.sizes() == x.sizes(), "add_layer_norm: residual must have the shape of x ", x.sizes(),
              ", got ", residual.sizes());
  TORCH_CHECK(residual.scalar_type() == x.scalar_type(), "add_layer_norm: residual has dtype ",
              residual.scalar_type(), ", x has ", x.scalar_type());
  check_same_device(residual, "residual", x, "x", "add_layer_norm");
  check_float_dtype(x, "x", "add_layer_norm");
  const auto p = weight.scalar_type();
  TORCH_CHECK(p == x.scalar_type() || p == at::kFloat, "add_layer_norm: weight must be ", x.scalar_type(),
              " or float32, got ", p);
  check_param(weight, "weight", x, p);
  check_param(bias, "bias", x, p);
  if (x_bias.has_value()) check_param(*x_bias, "x_bias", x, p);
}

inline int64_t rows_of(const at::Tensor& x) { return x.numel() / x.size(-1); }

// Shape of the per-row statistics: x's leading dimensions.
inline std::vector<int64_t> stats_shape(const at::Tensor& x) {
  auto s = x.sizes().vec();
  s.pop_back();
  return s;
}

// Checked, contiguous inputs, allocated outputs, and the kernel arguments pointing at them.
struct AddLayerNormFwdCall {
  at::Tensor x, residual, weight, bias, x_bias, out, mean, rstd;
  AddLayerNormFwdArgs args;
  bool empty = false;  // no rows: the empty outputs are the answer
};

inline AddLayerNormFwdCall prepare_add_layer_norm_fwd(const at::Tensor& x, const at::Tensor& residual,
                                                      const at::Tensor& weight, const at::Tensor& bias,
                                                      const std::optional<at::Tensor>& x_bias,
                                                      const std::optional<at::Tensor>& seed, double eps,
                                                      double dropout_p) {
  check_add_layer_norm_inputs(x, residual, weight, bias, x_bias);
  check_seed(seed, dropout_p, x, "add_layer_norm");
  TORCH_CHECK(eps > 0, "add_layer_norm: eps must be > 0, got ", eps);
  AddLayerNormFwdCall c;
  c.x = x.contiguous();
  c.residual = residual.contiguous();
  c.weight = weight.contiguous();
  c.bias = bias.contiguous();
  if (x_bias) c.x_bias = x_bias->contiguous();
  c.out = empty_output(c.x.sizes(), c.x.options());
  c.mean = at::empty(stats_shape(x), x.options().dtype(at::kFloat));
  c.rstd = at::empty(stats_shape(x), x.options().dtype(at::kFloat));
  AddLayerNormFwdArgs& a = c.args;
  a.x = c.x.data_ptr();
  a.residual = c.residual.data_ptr();
  a.weight = c.weight.data_ptr();
  a.bias = c.bias.data_ptr();
  a.x_bias = c.x_bias.defined() ? c.x_bias.data_ptr() : nullptr;
  a.out = c.out.data_ptr();
  a.mean = c.mean.data_ptr<float>();
  a.rstd = c.rstd.data_ptr<float>();
  a.rows = rows_of(x);
  a.hidden = x.size(-1);
  a.eps = static_cast<float>(eps);
  c.empty = a.rows == 0;
  if (dropout_p > 0) {
    a.seed = seed->data_ptr<int64_t>();
    a.threshold = dropout_threshold(dropout_p);
    a.scale = dropout_scale(dropout_p);
  }
  return c;
}

struct AddLayerNormBwdCall {
  at::Tensor grad_out, x, residual, weight, x_bias, mean, rstd;
  at::Tensor grad_residual, grad_x, grad_weight, grad_bias, grad_x_bias;
  AddLayerNormBwdArgs args;
  bool empty = false;  // no rows: the parameter gradients are zeros (as torch's)
};

inline AddLayerNormBwdCall prepare_add_layer_norm_bwd(const at::Tensor& grad_out, const at::Tensor& x,
                                                      const at::Tensor& residual, const at::Tensor& weight,
                                                      const std::optional<at::Tensor>& x_bias,
                                                      const at::Tensor& mean, const at::Tensor& rstd,
                                                      const std::optional<at::Tensor>& seed, double dropout_p,
                                                      bool want_grad_x_bias) {
  check_add_layer_norm_inputs(x, residual, weight, weight, x_bias);
  const char* op = "add_layer_norm backward";
  check_same_device(grad_out, "grad_out", x, "x", op);
  TORCH_CHECK(grad_out.sizes() == x.sizes() && grad_out.scalar_type() == x.scalar_type(), op,
              ": grad_out must match the output (", x.sizes(), ", ", x.scalar_type(), "), got ", grad_out.sizes(),
              ", ", grad_out.scalar_type());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"mean", &mean}, {"rstd", &rstd}}) {
    check_same_device(*t, name, x, "x", op);
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->numel() == rows_of(x), op, ": ", name,
                " must be the forward's float32 row statistics (", rows_of(x), " elements), got ", t->scalar_type(),
                " of shape ", t->sizes());
  }
  TORCH_CHECK(!want_grad_x_bias || x_bias.has_value(), "add_layer_norm backward: grad_x_bias needs x_bias");
  check_seed(seed, dropout_p, x, "add_layer_norm");
  AddLayerNormBwdCall c;
  c.grad_out = grad_out.contiguous();
  c.x = x.contiguous();
  c.residual = residual.contiguous();
  c.weight = weight.contiguous();
  if (x_bias) c.x_bias = x_bias->contiguous();
  c.mean = mean.contiguous();
  c.rstd = rstd.contiguous();
  c.grad_residual = empty_output(c.x.sizes(), c.x.options());
  c.grad_x = dropout_p > 0 ? empty_output(c.x.sizes(), c.x.options()) : at::empty({0}, x.options());
  c.empty = rows_of(x) == 0;
  const auto param_grad = [&] { return c.empty ? at::zeros_like(c.weight) : at::empty_like(c.weight); };
  c.grad_weight = param_grad();
  c.grad_bias = param_grad();
  c.grad_x_bias = want_grad_x_bias ? param_grad() : at::empty({0}, weight.options());
  AddLayerNormBwdArgs& a = c.args;
  a.grad_out = c.grad_out.data_ptr();
  a.x = c.x.data_ptr();
  a.residual = c.residual.data_ptr();
  a.x_bias = c.x_bias.defined() ? c.x_bias.data_ptr() : nullptr;
  a.mean = c.mean.data_ptr<float>();
  a.rstd = c.rstd.data_ptr<float>();
  a.weight = c.weight.data_ptr();
  a.grad_residual = c.grad_residual.data_ptr();
  a.grad_x = dropout_p > 0 ? c.grad_x.data_ptr() : nullptr;
  a.grad_weight = c.grad_weight.data_ptr();
  a.grad_bias = c.grad_bias.data_ptr();
  a.grad_x_bias = want_grad_x_bias ? c.grad_x_bias.data_ptr() : nullptr;
  a.rows = rows_of(x);
  a.hidden = x.size(-1);
  if (dropout_p > 0) {
    a.seed = seed->data_ptr<int64_t>();
    a.threshold = dropout_threshold(dropout_p);
    a.scale = dropout_scale(dropout_p);
  }
  return c;
}

}  // namespace bertfast
