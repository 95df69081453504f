// add_layer_norm on CPU: the kernels of the best CPU capability (add_layer_norm_cpu_kernels.h).
#include <torch/library.h>

#include "../common/cpu_capability.h"
#include "add_layer_norm_torch.h"

namespace bertfast {
BERTFAST_DECLARE_CPU_COPIES(
    void add_layer_norm_fwd(const AddLayerNormFwdArgs& a, DType act, DType param);
    void add_layer_norm_bwd(const AddLayerNormBwdArgs& a, DType act, DType param);)

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_layer_norm_fwd_cpu(
    const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, const at::Tensor& bias,
    const std::optional<at::Tensor>& x_bias, const std::optional<at::Tensor>& seed, double eps, double dropout_p) {
  AddLayerNormFwdCall c = prepare_add_layer_norm_fwd(x, residual, weight, bias, x_bias, seed, eps, dropout_p);
  if (!c.empty) BERTFAST_CPU_DISPATCH(add_layer_norm_fwd, c.args, to_dtype(x.scalar_type()), to_dtype(weight.scalar_type()));
  return {c.out, c.mean, c.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
    const std::optional<at::Tensor>& x_bias, const at::Tensor& mean, const at::Tensor& rstd,
    const std::optional<at::Tensor>& seed, double dropout_p, bool want_grad_x_bias) {
  AddLayerNormBwdCall c =
      prepare_add_layer_norm_bwd(grad_out, x, residual, weight, x_bias, mean, rstd, seed, dropout_p, want_grad_x_bias);
  if (!c.empty) BERTFAST_CPU_DISPATCH(add_layer_norm_bwd, c.args, to_dtype(x.scalar_type()), to_dtype(weight.scalar_type()));
  return {c.grad_residual, c.grad_x, c.grad_weight, c.grad_bias, c.grad_x_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(bertfast, CPU, m) {
  m.impl("add_layer_norm_fwd", &add_layer_norm_fwd_cpu);
  m.impl("add_layer_norm_bwd", &add_layer_norm_bwd_cpu);
}

}  // namespace bertfast
