// Checks and argument blocks shared by the CPU and CUDA glue of softmax + cross-entropy.
// The Python wrapper (bertfast/ops/cross_entropy.py) gives friendlier messages first; these
// guard direct torch.ops.bertfast calls so that no input can crash the process.
#pragma once
#include <ATen/ATen.h>

#include "../common/torch_utils.h"
#include "cross_entropy.h"

namespace bertfast {

inline void check_cross_entropy_inputs(const at::Tensor& logits, const at::Tensor& labels, double label_smoothing,
                                       const char* op) {
  TORCH_CHECK_VALUE(logits.dim() == 2 && logits.size(1) >= 1, op,
                    ": logits must have shape (rows, classes) with classes >= 1, got ", logits.sizes());
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == logits.size(0), op, ": labels must have shape (",
                    logits.size(0), ",), got ", labels.sizes());
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, op, ": labels must be int64, got ", labels.scalar_type());
  check_same_device(labels, "labels", logits, "logits", op);
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0, op, ": label_smoothing must be in [0, 1], got ",
                    label_smoothing);
  check_float_dtype(logits, "logits", op);
}

// The in-place calls write the gradient over the logits while reading the labels (and the
// backward grad_loss and lse) row by row: no element of one may live in the other.
inline void check_writes_over_logits(const at::Tensor& logits, std::initializer_list<std::pair<const char*, const at::Tensor*>> reads,
                                     const char* op) {
  check_no_internal_overlap(logits, "logits", op);
  for (const auto& [name, t] : reads) check_no_overlap(logits, "logits", *t, name, op);
}

// The saved per-row tensors a backward receives (rows,) float32 on logits' device.
inline void check_row_tensor(const at::Tensor& t, const char* name, const at::Tensor& logits, const char* op) {
  check_same_device(t, name, logits, "logits", op);
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == logits.size(0) && t.scalar_type() == at::kFloat, op, ": ", name,
                    " must be float32 of shape (", logits.size(0), ",), got ", t.scalar_type(), " of shape ",
                    t.sizes());
}

inline CrossEntropyArgs make_cross_entropy_args(const at::Tensor& logits, const at::Tensor& labels,
                                                int64_t ignore_index, double label_smoothing) {
  CrossEntropyArgs a;
  a.logits = logits.data_ptr();
  a.labels = labels.data_ptr<int64_t>();
  a.rows = logits.size(0);
  a.classes = logits.size(1);
  a.ignore_index = ignore_index;
  a.label_smoothing = static_cast<float>(label_smoothing);
  return a;
}

// A forward, checked and allocated: loss and lse (rows,) float32. With grad_into_logits (the
// in-place forward+backward) the gradient of sum(loss) is written over the logits, which must
// then be contiguous. With inplace_backward (the backward will write over these logits) the
// same overlap rules are checked now, where the caller made the tensors.
struct CrossEntropyFwdCall {
  at::Tensor logits, labels, loss, lse;
  CrossEntropyArgs args;
};

inline CrossEntropyFwdCall prepare_cross_entropy_fwd(const at::Tensor& logits, const at::Tensor& labels,
                                                     int64_t ignore_index, double label_smoothing, bool grad_into_logits,
                                                     const char* op, bool inplace_backward = false) {
  check_cross_entropy_inputs(logits, labels, label_smoothing, op);
  TORCH_CHECK_VALUE(!grad_into_logits || logits.is_contiguous(), op,
                    ": the in-place forward+backward needs contiguous logits");
  if (grad_into_logits || inplace_backward) check_writes_over_logits(logits, {{"labels", &labels}}, op);
  CrossEntropyFwdCall c;
  c.logits = logits.contiguous();
  c.labels = labels.contiguous();
  c.loss = at::empty({logits.size(0)}, logits.options().dtype(at::kFloat));
  c.lse = at::empty_like(c.loss);
  c.args = make_cross_entropy_args(c.logits, c.labels, ignore_index, label_smoothing);
  c.args.loss = c.loss.data_ptr<float>();
  c.args.lse = c.lse.data_ptr<float>();
  if (grad_into_logits) c.args.grad_logits = c.logits.data_ptr();
  return c;
}

// A backward, checked and allocated: the gradient goes to a new tensor, or over the
// (contiguous) logits when in_place.
struct CrossEntropyBwdCall {
  at::Tensor logits, labels, grad_loss, lse, grad;
  CrossEntropyArgs args;
};

inline CrossEntropyBwdCall prepare_cross_entropy_bwd(const at::Tensor& grad_loss, const at::Tensor& logits,
                                                     const at::Tensor& labels, const at::Tensor& lse,
                                                     int64_t ignore_index, double label_smoothing, bool in_place,
                                                     const char* op) {
  check_cross_entropy_inputs(logits, labels, label_smoothing, op);
  check_row_tensor(grad_loss, "grad_loss", logits, op);
  check_row_tensor(lse, "lse", logits, op);
  TORCH_CHECK_VALUE(!in_place || logits.is_contiguous(), op, ": the in-place backward needs contiguous logits");
  if (in_place) check_writes_over_logits(logits, {{"labels", &labels}, {"grad_loss", &grad_loss}, {"lse", &lse}}, op);
  CrossEntropyBwdCall c;
  c.logits = logits.contiguous();
  c.labels = labels.contiguous();
  c.grad_loss = grad_loss.contiguous();
  c.lse = lse.contiguous();
  c.grad = in_place ? c.logits : empty_output(c.logits.sizes(), c.logits.options());
  c.args = make_cross_entropy_args(c.logits, c.labels, ignore_index, label_smoothing);
  c.args.lse = c.lse.data_ptr<float>();
  c.args.grad_loss = c.grad_loss.data_ptr<float>();
  c.args.grad_logits = c.grad.data_ptr();
  return c;
}

}  // namespace bertfast
