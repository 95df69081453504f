// add_layer_norm: out = layer_norm(residual + dropout(x + x_bias)) over the last dimension.
// Argument blocks and launchers shared by the torch glue and the torch-free CUDA kernels.
#pragma once
#include <cstdint>

#include "../common/dtype.h"

#if defined(BERTFAST_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace bertfast {

struct AddLayerNormFwdArgs {
  const void* x;         // (rows, hidden), activation dtype
  const void* residual;  // (rows, hidden), activation dtype
  const void* weight;    // (hidden,), parameter dtype
  const void* bias;      // (hidden,), parameter dtype
  const void* x_bias;    // (hidden,), parameter dtype, or nullptr
  void* out;             // (rows, hidden), activation dtype
  float* mean;           // (rows,)
  float* rstd;           // (rows,)
  int64_t rows = 0;
  int64_t hidden = 0;
  float eps = 1e-12f;
  const int64_t* seed = nullptr;  // dropout key (device memory on CUDA); nullptr: no dropout
  uint32_t threshold = 0;
  float scale = 1.0f;
};

// The backward recomputes h = residual + dropout(x + x_bias) from its inputs.
struct AddLayerNormBwdArgs {
  const void* grad_out;  // (rows, hidden), activation dtype
  const void* x;         // (rows, hidden), activation dtype
  const void* residual;  // (rows, hidden), activation dtype
  const void* x_bias;    // (hidden,), parameter dtype, or nullptr
  const float* mean;
  const float* rstd;
  const void* weight;    // (hidden,), parameter dtype
  void* grad_residual;   // (rows, hidden), activation dtype: d loss / d h
  void* grad_x;          // (rows, hidden) or nullptr when there is no dropout
  void* grad_weight;     // (hidden,), parameter dtype
  void* grad_bias;       // (hidden,), parameter dtype
  void* grad_x_bias;     // (hidden,), parameter dtype, or nullptr
  float* partials;       // workspace: (partial_rows, 3, hidden) fp32, see *_num_partials
  int64_t rows = 0;
  int64_t hidden = 0;
  const int64_t* seed = nullptr;
  uint32_t threshold = 0;
  float scale = 1.0f;
};

#if defined(BERTFAST_WITH_CUDA)
// Largest hidden size the CUDA kernels take (they keep a row in registers).
int64_t add_layer_norm_cuda_max_hidden();
// Rows of the fp32 partial-sum workspace the CUDA backward needs.
int64_t add_layer_norm_cuda_num_partials(int64_t rows, int64_t hidden, DType act, bool aligned, int device);
cudaError_t add_layer_norm_fwd_cuda(const AddLayerNormFwdArgs& args, DType act, DType param, bool aligned,
                                    cudaStream_t stream);
cudaError_t add_layer_norm_bwd_cuda(const AddLayerNormBwdArgs& args, DType act, DType param, bool aligned,
                                    int device, cudaStream_t stream);
#endif

}  // namespace bertfast
