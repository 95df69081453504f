// softmax + cross-entropy on CUDA: checks, allocation, and launches on the current stream
// (kernels in cross_entropy_kernels.cu). Labels are range-checked inside the kernels (a
// device-side assert) so that no call synchronises with the device.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cross_entropy_torch.h"

namespace bertfast {
namespace {

constexpr const char* kOp = "softmax_cross_entropy";

void check_launch(cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, kOp, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor> softmax_cross_entropy_fwd_cuda(const at::Tensor& logits_in,
                                                                  const at::Tensor& labels_in, int64_t ignore_index,
                                                                  double label_smoothing,
                                                                  bool /*inplace_backward: autograd's business*/) {
  check_cross_entropy_inputs(logits_in, labels_in, label_smoothing, kOp);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), labels = labels_in.contiguous();
  at::Tensor loss = at::empty({logits.size(0)}, logits.options().dtype(at::kFloat));
  at::Tensor lse = at::empty_like(loss);
  CrossEntropyArgs a = make_cross_entropy_args(logits, labels, ignore_index, label_smoothing);
  a.loss = loss.data_ptr<float>();
  a.lse = lse.data_ptr<float>();
  check_launch(cross_entropy_fwd_cuda(a, to_dtype(logits.scalar_type()), at::cuda::getCurrentCUDAStream()));
  return {loss, lse};
}

void run_backward(const at::Tensor& grad_loss_in, const at::Tensor& logits, const at::Tensor& labels_in,
                  const at::Tensor& lse_in, int64_t ignore_index, double label_smoothing, const at::Tensor& grad) {
  check_cross_entropy_inputs(logits, labels_in, label_smoothing, kOp);
  check_row_tensor(grad_loss_in, "grad_loss", logits, kOp);
  check_row_tensor(lse_in, "lse", logits, kOp);
  const at::Tensor labels = labels_in.contiguous(), grad_loss = grad_loss_in.contiguous(), lse = lse_in.contiguous();
  CrossEntropyArgs a = make_cross_entropy_args(logits, labels, ignore_index, label_smoothing);
  a.lse = const_cast<float*>(lse.data_ptr<float>());
  a.grad_loss = grad_loss.data_ptr<float>();
  a.grad_logits = grad.data_ptr();
  check_launch(cross_entropy_bwd_cuda(a, to_dtype(logits.scalar_type()), at::cuda::getCurrentCUDAStream()));
}

at::Tensor softmax_cross_entropy_bwd_cuda(const at::Tensor& grad_loss, const at::Tensor& logits_in,
                                          const at::Tensor& labels, const at::Tensor& lse, int64_t ignore_index,
                                          double label_smoothing) {
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  at::Tensor grad = at::empty_like(logits);
  run_backward(grad_loss, logits, labels, lse, ignore_index, label_smoothing, grad);
  return grad;
}

void softmax_cross_entropy_bwd_inplace_cuda(const at::Tensor& grad_loss, const at::Tensor& logits,
                                            const at::Tensor& labels, const at::Tensor& lse, int64_t ignore_index,
                                            double label_smoothing) {
  TORCH_CHECK_VALUE(logits.is_contiguous(), kOp, ": the in-place backward needs contiguous logits");
  const c10::cuda::CUDAGuard guard(logits.device());
  run_backward(grad_loss, logits, labels, lse, ignore_index, label_smoothing, logits);
}

std::tuple<at::Tensor, at::Tensor> softmax_cross_entropy_fwd_bwd_inplace_cuda(const at::Tensor& logits,
                                                                              const at::Tensor& labels_in,
                                                                              int64_t ignore_index,
                                                                              double label_smoothing) {
  check_cross_entropy_inputs(logits, labels_in, label_smoothing, kOp);
  TORCH_CHECK_VALUE(logits.is_contiguous(), kOp, ": the in-place forward+backward needs contiguous logits");
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor labels = labels_in.contiguous();
  at::Tensor loss = at::empty({logits.size(0)}, logits.options().dtype(at::kFloat));
  at::Tensor lse = at::empty_like(loss);
  CrossEntropyArgs a = make_cross_entropy_args(logits, labels, ignore_index, label_smoothing);
  a.loss = loss.data_ptr<float>();
  a.lse = lse.data_ptr<float>();
  a.grad_logits = logits.data_ptr();
  check_launch(cross_entropy_fwd_bwd_cuda(a, to_dtype(logits.scalar_type()), at::cuda::getCurrentCUDAStream()));
  return {loss, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(bertfast, CUDA, m) {
  m.impl("softmax_cross_entropy_fwd", &softmax_cross_entropy_fwd_cuda);
  m.impl("softmax_cross_entropy_bwd", &softmax_cross_entropy_bwd_cuda);
  m.impl("softmax_cross_entropy_bwd_", &softmax_cross_entropy_bwd_inplace_cuda);
  m.impl("softmax_cross_entropy_fwd_bwd_", &softmax_cross_entropy_fwd_bwd_inplace_cuda);
}

}  // namespace bertfast
