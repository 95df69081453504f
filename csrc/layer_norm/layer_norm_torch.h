// Checks and allocation shared by the CPU and CUDA glue of add_layer_norm. The Python
// wrapper (bertfast/ops/add_layer_norm.py) gives friendlier messages first; these guard
// direct torch.ops.bertfast calls so that no input can crash the process.
#pragma once
#include <ATen/ATen.h>

#include "../common/torch_utils.h"
#include "layer_norm.h"

namespace bertfast {

inline void check_param(const at::Tensor& t, const char* name, const at::Tensor& x, at::ScalarType param_dtype) {
  const int64_t hidden = x.size(-1);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == hidden, "add_layer_norm: ", name, " must have shape (", hidden,
              ",), got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), "add_layer_norm: ", name, " is on ", t.device(), ", x on ", x.device());
  TORCH_CHECK(t.scalar_type() == param_dtype, "add_layer_norm: ", name, " has dtype ", t.scalar_type(),
              ", expected ", param_dtype, " like weight");
}

// Parameters are either in the activation dtype or float32 (autocast keeps fp32 parameters).
inline void check_add_layer_norm_inputs(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                                        const at::Tensor& bias, const std::optional<at::Tensor>& x_bias) {
  TORCH_CHECK(x.dim() >= 1 && x.numel() > 0, "add_layer_norm: x must be a non-empty tensor, got shape ", x.sizes());
  TORCH_CHECK(residual.sizes() == x.sizes(), "add_layer_norm: residual must have the shape of x ", x.sizes(),
              ", got ", residual.sizes());
  TORCH_CHECK(residual.scalar_type() == x.scalar_type(), "add_layer_norm: residual has dtype ",
              residual.scalar_type(), ", x has ", x.scalar_type());
  TORCH_CHECK(residual.device() == x.device(), "add_layer_norm: residual is on ", residual.device(), ", x on ",
              x.device());
  to_dtype(x.scalar_type());
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

}  // namespace bertfast
