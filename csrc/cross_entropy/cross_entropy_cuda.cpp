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

std::tuple<at::Tensor, at::Tensor> softmax_cross_entropy_fwd_cuda(const at::Tensor& logits, const at::Tensor& labels,
                                                                  int64_t ignore_index, double label_smoothing,
                                                                  bool inplace_backward) {
  const c10::cuda::CUDAGuard guard(logits.device());
  CrossEntropyFwdCall c = prepare_cross_entropy_fwd(logits, labels, ignore_index, label_smoothing, false, kOp, inplace_backward);
  check_launch(cross_entropy_fwd_cuda(c.args, to_dtype(logits.scalar_type()), at::cuda::getCurrentCUDAStream()));
  return {c.loss, c.lse};
}

at::Tensor softmax_cross_entropy_bwd_cuda(const at::Tensor& grad_loss, const at::Tensor& logits,
                                          const at::Tensor& labels, const at::Tensor& lse, int64_t ignore_index,
                                          double label_smoothing) {
  const c10::cuda::CUDAGuard guard(logits.device());
  CrossEntropyBwdCall c =
      prepare_cross_entropy_bwd(grad_loss, logits, labels, lse, ignore_index, label_smoothing, false, kOp);
  check_launch(cross_entropy_bwd_cuda(c.args, to_dtype(logits.scalar_type()), at::cuda::getCurrentCUDAStream()));
  return c.grad;
}

void softmax_cross_entropy_bwd_inplace_cuda(const at::Tensor& grad_loss, const at::Tensor& logits,
                                            const at::Tensor& labels, const at::Tensor& lse, int64_t ignore_index,
                                            double label_smoothing) {
  const c10::cuda::CUDAGuard guard(logits.device());
  CrossEntropyBwdCall c =
      prepare_cross_entropy_bwd(grad_loss, logits, labels, lse, ignore_index, label_smoothing, true, kOp);
  check_launch(cross_entropy_bwd_cuda(c.args, to_dtype(logits.scalar_type()), at::cuda::getCurrentCUDAStream()));
}

std::tuple<at::Tensor, at::Tensor> softmax_cross_entropy_fwd_bwd_inplace_cuda(const at::Tensor& logits,
                                                                              const at::Tensor& labels,
                                                                              int64_t ignore_index,
                                                                              double label_smoothing) {
  const c10::cuda::CUDAGuard guard(logits.device());
  CrossEntropyFwdCall c = prepare_cross_entropy_fwd(logits, labels, ignore_index, label_smoothing, true, kOp);
  check_launch(cross_entropy_fwd_bwd_cuda(c.args, to_dtype(logits.scalar_type()), at::cuda::getCurrentCUDAStream()));
  return {c.loss, c.lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(bertfast, CUDA, m) {
  m.impl("softmax_cross_entropy_fwd", &softmax_cross_entropy_fwd_cuda);
  m.impl("softmax_cross_entropy_bwd", &softmax_cross_entropy_bwd_cuda);
  m.impl("softmax_cross_entropy_bwd_", &softmax_cross_entropy_bwd_inplace_cuda);
  m.impl("softmax_cross_entropy_fwd_bwd_", &softmax_cross_entropy_fwd_bwd_inplace_cuda);
}

}  // namespace bertfast
