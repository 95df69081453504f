// softmax + cross-entropy on CPU: checks, allocation, and the call into the kernels of the
// best CPU capability (cross_entropy_cpu_kernels.h).
#include <torch/library.h>

#include "../common/cpu_capability.h"
#include "cross_entropy_torch.h"

namespace bertfast {
BERTFAST_DECLARE_CPU_COPIES(
    void cross_entropy_fwd(const CrossEntropyArgs& a, DType dtype);
    void cross_entropy_bwd(const CrossEntropyArgs& a, DType dtype);
    void cross_entropy_fwd_bwd(const CrossEntropyArgs& a, DType dtype);)

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

std::tuple<at::Tensor, at::Tensor> softmax_cross_entropy_fwd_cpu(const at::Tensor& logits, const at::Tensor& labels,
                                                                 int64_t ignore_index, double label_smoothing,
                                                                 bool inplace_backward) {
  CrossEntropyFwdCall c = prepare_cross_entropy_fwd(logits, labels, ignore_index, label_smoothing, false, kOp, inplace_backward);
  check_labels_in_range(c.labels, c.args.classes, ignore_index);
  BERTFAST_CPU_DISPATCH(cross_entropy_fwd, c.args, to_dtype(logits.scalar_type()));
  return {c.loss, c.lse};
}

at::Tensor softmax_cross_entropy_bwd_cpu(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& labels,
                                         const at::Tensor& lse, int64_t ignore_index, double label_smoothing) {
  CrossEntropyBwdCall c =
      prepare_cross_entropy_bwd(grad_loss, logits, labels, lse, ignore_index, label_smoothing, false, kOp);
  check_labels_in_range(c.labels, c.args.classes, ignore_index);
  BERTFAST_CPU_DISPATCH(cross_entropy_bwd, c.args, to_dtype(logits.scalar_type()));
  return c.grad;
}

void softmax_cross_entropy_bwd_inplace_cpu(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& labels,
                                           const at::Tensor& lse, int64_t ignore_index, double label_smoothing) {
  CrossEntropyBwdCall c =
      prepare_cross_entropy_bwd(grad_loss, logits, labels, lse, ignore_index, label_smoothing, true, kOp);
  check_labels_in_range(c.labels, c.args.classes, ignore_index);
  BERTFAST_CPU_DISPATCH(cross_entropy_bwd, c.args, to_dtype(logits.scalar_type()));
}

std::tuple<at::Tensor, at::Tensor> softmax_cross_entropy_fwd_bwd_inplace_cpu(const at::Tensor& logits,
                                                                             const at::Tensor& labels,
                                                                             int64_t ignore_index,
                                                                             double label_smoothing) {
  CrossEntropyFwdCall c = prepare_cross_entropy_fwd(logits, labels, ignore_index, label_smoothing, true, kOp);
  check_labels_in_range(c.labels, c.args.classes, ignore_index);
  BERTFAST_CPU_DISPATCH(cross_entropy_fwd_bwd, c.args, to_dtype(logits.scalar_type()));
  return {c.loss, c.lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(bertfast, CPU, m) {
  m.impl("softmax_cross_entropy_fwd", &softmax_cross_entropy_fwd_cpu);
  m.impl("softmax_cross_entropy_bwd", &softmax_cross_entropy_bwd_cpu);
  m.impl("softmax_cross_entropy_bwd_", &softmax_cross_entropy_bwd_inplace_cpu);
  m.impl("softmax_cross_entropy_fwd_bwd_", &softmax_cross_entropy_fwd_bwd_inplace_cpu);
}

}  // namespace bertfast
