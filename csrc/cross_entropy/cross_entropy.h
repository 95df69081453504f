// softmax + cross-entropy over the rows of a (rows, classes) logits matrix, with
// label smoothing and an ignored label. Argument blocks and launchers shared by the torch
// glue, the CPU kernels and the torch-free CUDA kernels.
//
// Per row r with label y (not ignore_index), eps = label_smoothing, C = classes:
//   lse  = log(sum_j exp(x_j))
//   loss = lse - (1 - eps) * x_y - (eps / C) * sum_j x_j
//   dloss/dx_j = softmax_j - eps / C - (1 - eps) * [j == y]
// Rows whose label is ignore_index have loss 0 and gradient 0 (whatever the upstream).
#pragma once
#include <cstdint>

#include "../common/dtype.h"

#if defined(BERTFAST_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace bertfast {

struct CrossEntropyArgs {
  const void* logits;        // (rows, classes), contiguous, logits dtype
  const int64_t* labels;     // (rows,)
  float* loss = nullptr;     // (rows,) out: per-row loss (0 where ignored)
  float* lse = nullptr;      // (rows,) out (forward) or in (backward): log-sum-exp per row
  const float* grad_loss = nullptr;  // (rows,) backward: upstream gradient of each row's loss
  void* grad_logits = nullptr;  // (rows, classes) out, logits dtype; may equal logits (in place)
  int64_t rows = 0;
  int64_t classes = 0;
  int64_t ignore_index = -100;
  float label_smoothing = 0.0f;
};

#if defined(BERTFAST_WITH_CUDA)
// Labels outside [0, classes) that are not ignore_index fail a device-side assertion in
// these kernels (reported by the next synchronising CUDA call as "device-side assert
// triggered"; the message names the op and the bad label).
// Forward: loss and lse.
cudaError_t cross_entropy_fwd_cuda(const CrossEntropyArgs& args, DType dtype, cudaStream_t stream);
// Backward: grad_logits from lse and grad_loss.
cudaError_t cross_entropy_bwd_cuda(const CrossEntropyArgs& args, DType dtype, cudaStream_t stream);
// Both at once: loss, lse, and grad_logits = d(sum of the rows' losses)/d(logits).
cudaError_t cross_entropy_fwd_bwd_cuda(const CrossEntropyArgs& args, DType dtype, cudaStream_t stream);
#endif

}  // namespace bertfast
