// add_layer_norm on CPU: checks, allocation, and the call into the kernels of the best
// CPU capability (layer_norm_cpu_kernels.h).
#include <torch/library.h>

#include "../common/cpu_capability.h"
#include "layer_norm_torch.h"

namespace bertfast {
namespace AVX2 {
void add_layer_norm_fwd(const AddLayerNormFwdArgs& a, DType act, DType param);
void add_layer_norm_bwd(const AddLayerNormBwdArgs& a, DType act, DType param);
}  // namespace AVX2
namespace DEFAULT {
void add_layer_norm_fwd(const AddLayerNormFwdArgs& a, DType act, DType param);
void add_layer_norm_bwd(const AddLayerNormBwdArgs& a, DType act, DType param);
}  // namespace DEFAULT

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm_fwd_cpu(
    const at::Tensor& x_in, const at::Tensor& residual_in, const at::Tensor& weight_in, const at::Tensor& bias_in,
    const std::optional<at::Tensor>& x_bias_in, const std::optional<at::Tensor>& seed, double eps, double dropout_p) {
  check_add_layer_norm_inputs(x_in, residual_in, weight_in, bias_in, x_bias_in);
  check_seed(seed, dropout_p, x_in, "add_layer_norm");
  TORCH_CHECK(eps > 0, "add_layer_norm: eps must be > 0, got ", eps);
  const at::Tensor x = x_in.contiguous(), residual = residual_in.contiguous();
  const at::Tensor weight = weight_in.contiguous(), bias = bias_in.contiguous();
  const std::optional<at::Tensor> x_bias = x_bias_in ? std::optional(x_bias_in->contiguous()) : std::nullopt;
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor pre_norm = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor mean = at::empty(stats_shape(x), x.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty(stats_shape(x), x.options().dtype(at::kFloat));

  AddLayerNormFwdArgs a;
  a.x = x.data_ptr();
  a.residual = residual.data_ptr();
  a.weight = weight.data_ptr();
  a.bias = bias.data_ptr();
  a.x_bias = x_bias ? x_bias->data_ptr() : nullptr;
  a.out = out.data_ptr();
  a.pre_norm = pre_norm.data_ptr();
  a.mean = mean.data_ptr<float>();
  a.rstd = rstd.data_ptr<float>();
  a.rows = rows_of(x);
  a.hidden = x.size(-1);
  a.eps = static_cast<float>(eps);
  if (dropout_p > 0) {
    a.seed = seed->data_ptr<int64_t>();
    a.threshold = dropout_threshold(dropout_p);
    a.scale = dropout_scale(dropout_p);
  }
  BERTFAST_CPU_DISPATCH(add_layer_norm_fwd, a, to_dtype(x.scalar_type()), to_dtype(weight.scalar_type()));
  return {out, pre_norm, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm_bwd_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& pre_norm, const at::Tensor& mean, const at::Tensor& rstd,
    const at::Tensor& weight_in, const std::optional<at::Tensor>& seed, double dropout_p, bool want_grad_x_bias) {
  TORCH_CHECK(grad_out_in.sizes() == pre_norm.sizes() && grad_out_in.scalar_type() == pre_norm.scalar_type(),
              "add_layer_norm backward: grad_out must match the output (", pre_norm.sizes(), ", ",
              pre_norm.scalar_type(), "), got ", grad_out_in.sizes(), ", ", grad_out_in.scalar_type());
  TORCH_CHECK(pre_norm.is_contiguous() && mean.is_contiguous() && rstd.is_contiguous() &&
                  mean.scalar_type() == at::kFloat && rstd.numel() == rows_of(pre_norm),
              "add_layer_norm backward: saved tensors are not the forward's");
  check_seed(seed, dropout_p, pre_norm, "add_layer_norm");
  const at::Tensor grad_out = grad_out_in.contiguous(), weight = weight_in.contiguous();
  check_param(weight, "weight", pre_norm, weight.scalar_type());
  at::Tensor grad_pre_norm = at::empty_like(pre_norm);
  at::Tensor grad_x = dropout_p > 0 ? at::empty_like(pre_norm) : at::empty({0}, pre_norm.options());
  at::Tensor grad_weight = at::empty_like(weight), grad_bias = at::empty_like(weight);
  at::Tensor grad_x_bias = want_grad_x_bias ? at::empty_like(weight) : at::empty({0}, weight.options());

  AddLayerNormBwdArgs a;
  a.grad_out = grad_out.data_ptr();
  a.pre_norm = pre_norm.data_ptr();
  a.mean = mean.data_ptr<float>();
  a.rstd = rstd.data_ptr<float>();
  a.weight = weight.data_ptr();
  a.grad_pre_norm = grad_pre_norm.data_ptr();
  a.grad_x = dropout_p > 0 ? grad_x.data_ptr() : nullptr;
  a.grad_weight = grad_weight.data_ptr();
  a.grad_bias = grad_bias.data_ptr();
  a.grad_x_bias = want_grad_x_bias ? grad_x_bias.data_ptr() : nullptr;
  a.rows = rows_of(pre_norm);
  a.hidden = pre_norm.size(-1);
  if (dropout_p > 0) {
    a.seed = seed->data_ptr<int64_t>();
    a.threshold = dropout_threshold(dropout_p);
    a.scale = dropout_scale(dropout_p);
  }
  BERTFAST_CPU_DISPATCH(add_layer_norm_bwd, a, to_dtype(pre_norm.scalar_type()), to_dtype(weight.scalar_type()));
  return {grad_pre_norm, grad_x, grad_weight, grad_bias, grad_x_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(bertfast, CPU, m) {
  m.impl("add_layer_norm_fwd", &add_layer_norm_fwd_cpu);
  m.impl("add_layer_norm_bwd", &add_layer_norm_bwd_cpu);
}

}  // namespace bertfast
