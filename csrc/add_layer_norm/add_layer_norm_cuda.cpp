// add_layer_norm on CUDA: launch on torch's current stream (kernels in add_layer_norm_kernels.cu).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "add_layer_norm_torch.h"

namespace bertfast {
namespace {

// The 16-byte vector path needs every pointer 16-byte aligned and whole vectors per row.
bool vector_path_ok(std::initializer_list<const void*> ptrs, int64_t hidden, at::ScalarType act) {
  const int64_t vec = act == at::kFloat ? 4 : 8;
  if (hidden % vec != 0) return false;
  for (const void* p : ptrs)
    if (p && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

void check_hidden(int64_t hidden) {
  TORCH_CHECK(hidden <= add_layer_norm_cuda_max_hidden(), "add_layer_norm: hidden size ", hidden,
              " is larger than the CUDA kernels support (", add_layer_norm_cuda_max_hidden(), ")");
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "add_layer_norm: ", what, " kernel launch failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_layer_norm_fwd_cuda_op(
    const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, const at::Tensor& bias,
    const std::optional<at::Tensor>& x_bias, const std::optional<at::Tensor>& seed, double eps, double dropout_p) {
  check_hidden(x.size(-1));
  const c10::cuda::CUDAGuard guard(x.device());
  AddLayerNormFwdCall c = prepare_add_layer_norm_fwd(x, residual, weight, bias, x_bias, seed, eps, dropout_p);
  if (c.empty) return {c.out, c.mean, c.rstd};
  const AddLayerNormFwdArgs& a = c.args;
  const bool aligned = vector_path_ok({a.x, a.residual, a.weight, a.bias, a.x_bias, a.out}, a.hidden, x.scalar_type());
  check_launch(add_layer_norm_fwd_cuda(a, to_dtype(x.scalar_type()), to_dtype(weight.scalar_type()), aligned,
                                       at::cuda::getCurrentCUDAStream()),
               "forward");
  return {c.out, c.mean, c.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm_bwd_cuda_op(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
    const std::optional<at::Tensor>& x_bias, const at::Tensor& mean, const at::Tensor& rstd,
    const std::optional<at::Tensor>& seed, double dropout_p, bool want_grad_x_bias) {
  check_hidden(x.size(-1));
  const c10::cuda::CUDAGuard guard(x.device());
  AddLayerNormBwdCall c =
      prepare_add_layer_norm_bwd(grad_out, x, residual, weight, x_bias, mean, rstd, seed, dropout_p, want_grad_x_bias);
  if (c.empty) return {c.grad_residual, c.grad_x, c.grad_weight, c.grad_bias, c.grad_x_bias};
  AddLayerNormBwdArgs& a = c.args;
  const bool aligned = vector_path_ok({a.grad_out, a.x, a.residual, a.x_bias, a.weight, a.grad_residual, a.grad_x},
                                      a.hidden, x.scalar_type());
  const DType act = to_dtype(x.scalar_type());
  const int device = x.get_device();
  const int64_t num_partials = add_layer_norm_cuda_num_partials(a.rows, a.hidden, act, aligned, device);
  const at::Tensor partials = at::empty({num_partials, 3, a.hidden}, x.options().dtype(at::kFloat));
  a.partials = partials.data_ptr<float>();
  check_launch(add_layer_norm_bwd_cuda(a, act, to_dtype(weight.scalar_type()), aligned, device,
                                       at::cuda::getCurrentCUDAStream()),
               "backward");
  return {c.grad_residual, c.grad_x, c.grad_weight, c.grad_bias, c.grad_x_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(bertfast, CUDA, m) {
  m.impl("add_layer_norm_fwd", &add_layer_norm_fwd_cuda_op);
  m.impl("add_layer_norm_bwd", &add_layer_norm_bwd_cuda_op);
}

}  // namespace bertfast
