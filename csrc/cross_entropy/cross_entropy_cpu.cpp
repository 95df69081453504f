// softmax + cross-entropy on CPU: checks, allocation, and the call into the kernels of the
// best CPU capability (cross_entropy_cpu_kernels.h).
#include <torch/library.h>

#include "../common/cpu_capability.h"
#include "cross_entropy_torch.h"

namespace bertfast {
namespace AVX512 {
void cross_entropy_fwd(const CrossEntropyArgs& a, DType dtype);
void cross_entropy_bwd(const CrossEntropyArgs& a, DType dtype);
void cross_entropy_fwd_bwd(const CrossEntropyArgs& a, DType dtype);
}  // namespace AVX512
namespace AVX2 {
void cross_entropy_fwd(const CrossEntropyArgs& a, DType dtype);
void cross_entropy_bwd(const CrossEntropyArgs& a, DType dtype);
void cross_entropy_fwd_bwd(const CrossEntropyArgs& a, DType dtype);
}  // namespace AVX2
namespace DEFAULT {
void cross_entropy_fwd(const CrossEntropyArgs& a, DType dtype);
void cross_entropy_bwd(const CrossEntropyArgs& a, DType dtype);
void cross_entropy_fwd_bwd(const CrossEntropyArgs& a, DType dtype);
}  // namespace DEFAULT

namespace {

constexpr const char* kOp = "softmax_cross_entropy";

// Every label is in [0, classes) or equal to ignore_index (one cheap pass over the labels;
// the kernels index rows by label and must never read out of bounds).
void check_labels_in_range(const at::Tensor& labels, int64_t classes, int64_t ignore_index) {
  const int64_t* p = labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < labels.numel(); ++i) {
    const int64_t y = p[i];
    TORCH_CHECK_VALUE(y == ignore_index || (y >= 0 && y < classes), kOp, ": labels[", i, "] = ", y,
                      " is outside [0, ", classes, ") and is not ignore_index (", ignore_index, ")");
  }
}

std::tuple<at::Tensor, at::Tensor> softmax_cross_entropy_fwd_cpu(const at::Tensor& logits_in,
                                                                 const at::Tensor& labels_in, int64_t ignore_index,
                                                                 double label_smoothing,
                                                                 bool /*inplace_backward: autograd's business*/) {
  check_cross_entropy_inputs(logits_in, labels_in, label_smoothing, kOp);
  const at::Tensor logits = logits_in.contiguous(), labels = labels_in.contiguous();
  check_labels_in_range(labels, logits.size(1), ignore_index);
  at::Tensor loss = at::empty({logits.size(0)}, logits.options().dtype(at::kFloat));
  at::Tensor lse = at::empty_like(loss);
  CrossEntropyArgs a = make_cross_entropy_args(logits, labels, ignore_index, label_smoothing);
  a.loss = loss.data_ptr<float>();
  a.lse = lse.data_ptr<float>();
  BERTFAST_CPU_DISPATCH(cross_entropy_fwd, a, to_dtype(logits.scalar_type()));
  return {loss, lse};
}

// Writes the gradient into `grad` (which may be `logits` itself).
void run_backward(const at::Tensor& grad_loss_in, const at::Tensor& logits, const at::Tensor& labels_in,
                  const at::Tensor& lse, int64_t ignore_index, double label_smoothing, const at::Tensor& grad) {
  check_cross_entropy_inputs(logits, labels_in, label_smoothing, kOp);
  check_row_tensor(grad_loss_in, "grad_loss", logits, kOp);
  check_row_tensor(lse, "lse", logits, kOp);
  const at::Tensor labels = labels_in.contiguous(), grad_loss = grad_loss_in.contiguous();
  const at::Tensor lse_c = lse.contiguous();
  check_labels_in_range(labels, logits.size(1), ignore_index);
  CrossEntropyArgs a = make_cross_entropy_args(logits, labels, ignore_index, label_smoothing);
  a.lse = const_cast<float*>(lse_c.data_ptr<float>());
  a.grad_loss = grad_loss.data_ptr<float>();
  a.grad_logits = grad.data_ptr();
  BERTFAST_CPU_DISPATCH(cross_entropy_bwd, a, to_dtype(logits.scalar_type()));
}

at::Tensor softmax_cross_entropy_bwd_cpu(const at::Tensor& grad_loss, const at::Tensor& logits_in,
                                         const at::Tensor& labels, const at::Tensor& lse, int64_t ignore_index,
                                         double label_smoothing) {
  const at::Tensor logits = logits_in.contiguous();
  at::Tensor grad = empty_output(logits.sizes(), logits.options());
  run_backward(grad_loss, logits, labels, lse, ignore_index, label_smoothing, grad);
  return grad;
}

void softmax_cross_entropy_bwd_inplace_cpu(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& labels,
                                           const at::Tensor& lse, int64_t ignore_index, double label_smoothing) {
  TORCH_CHECK_VALUE(logits.is_contiguous(), kOp, ": the in-place backward needs contiguous logits");
  run_backward(grad_loss, logits, labels, lse, ignore_index, label_smoothing, logits);
}

std::tuple<at::Tensor, at::Tensor> softmax_cross_entropy_fwd_bwd_inplace_cpu(const at::Tensor& logits,
                                                                             const at::Tensor& labels_in,
                                                                             int64_t ignore_index,
                                                                             double label_smoothing) {
  check_cross_entropy_inputs(logits, labels_in, label_smoothing, kOp);
  TORCH_CHECK_VALUE(logits.is_contiguous(), kOp, ": the in-place forward+backward needs contiguous logits");
  const at::Tensor labels = labels_in.contiguous();
  check_labels_in_range(labels, logits.size(1), ignore_index);
  at::Tensor loss = at::empty({logits.size(0)}, logits.options().dtype(at::kFloat));
  at::Tensor lse = at::empty_like(loss);
  CrossEntropyArgs a = make_cross_entropy_args(logits, labels, ignore_index, label_smoothing);
  a.loss = loss.data_ptr<float>();
  a.lse = lse.data_ptr<float>();
  a.grad_logits = logits.data_ptr();
  BERTFAST_CPU_DISPATCH(cross_entropy_fwd_bwd, a, to_dtype(logits.scalar_type()));
  return {loss, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(bertfast, CPU, m) {
  m.impl("softmax_cross_entropy_fwd", &softmax_cross_entropy_fwd_cpu);
  m.impl("softmax_cross_entropy_bwd", &softmax_cross_entropy_bwd_cpu);
  m.impl("softmax_cross_entropy_bwd_", &softmax_cross_entropy_bwd_inplace_cpu);
  m.impl("softmax_cross_entropy_fwd_bwd_", &softmax_cross_entropy_fwd_bwd_inplace_cpu);
}

}  // namespace bertfast
