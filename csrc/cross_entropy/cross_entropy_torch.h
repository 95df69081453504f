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
  TORCH_CHECK_VALUE(labels.device() == logits.device(), op, ": labels are on ", labels.device(), ", logits on ",
                    logits.device());
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0, op, ": label_smoothing must be in [0, 1], got ",
                    label_smoothing);
  to_dtype(logits.scalar_type());
}

// The saved per-row tensors a backward receives (rows,) float32 on logits' device.
inline void check_row_tensor(const at::Tensor& t, const char* name, const at::Tensor& logits, const char* op) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == logits.size(0) && t.scalar_type() == at::kFloat &&
                        t.device() == logits.device(),
                    op, ": ", name, " must be float32 of shape (", logits.size(0), ",) on ", logits.device(), ", got ",
                    t.scalar_type(), " ", t.sizes(), " on ", t.device());
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

}  // namespace bertfast
