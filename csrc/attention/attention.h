// attention: softmax(scale * Q K^T + bias, masked) V with dropout on the probabilities, fused.
// Argument blocks and launchers shared by the torch glue, the CPU kernels and the torch-free
// CUDA kernels.
//
// One description covers both public ops:
//  - padded:  q (batch, seq_q, heads, dim), k/v (batch, seq_k, heads, dim), an optional key mask
//             (batch, seq_k) and an optional additive bias seen through strides as
//             (batch, heads, seq_q, seq_k) (stride 0 on broadcast dimensions);
//  - varlen:  q/k/v (total, heads, dim) packed tokens; sequence b holds tokens
//             cu_seqlens[b] .. cu_seqlens[b+1]-1 (self-attention: the same for q and k).
// Element (b, token t, head h, d) of q lives at q + b*q_batch_stride + t*q_token_stride +
// h*q_head_stride + d; for varlen the batch stride is 0 and t is the global token index.
//
// Row log-sum-exp (natural log, of the scaled and biased scores) is stored (heads, total_q)
// float32, where total_q = batch*seq_q for the padded op: lse[h*total_q + global query token].
// A query row with no key to attend has lse = +inf and output 0.
//
// Dropout counter of probability (b, h, i, j) (i, j positions inside sequence b):
//   ((b*heads + h)*counter_q + i)*counter_k + j
// with (counter_q, counter_k) = (seq_q, seq_k) for the padded op and (max_seqlen, max_seqlen)
// for varlen: the flat index of a (batch, heads, counter_q, counter_k) tensor, so
// bertfast.reference.dropout_keep_mask(seed, (batch, heads, counter_q, counter_k), p) is the mask.
#pragma once
#include <cstdint>

#include "../common/dtype.h"

#if defined(BERTFAST_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace bertfast {

struct AttentionProblem {
  int64_t batch = 0, heads = 0, head_dim = 0;
  int64_t seq_q = 0, seq_k = 0;        // padded: sequence lengths; varlen: max_seqlen (both)
  int64_t total_q = 0;                 // rows of the lse: batch*seq_q (padded) or total tokens (varlen)
  const int32_t* cu_seqlens = nullptr;  // varlen: (batch + 1) offsets; nullptr: padded
  const bool* key_mask = nullptr;      // padded only: (batch, seq_k), contiguous, true = attend
  const void* bias = nullptr;          // padded only: bias dtype, indexed by bias_stride_*
  DType bias_dtype = DType::kFloat32;
  int64_t bias_stride_b = 0, bias_stride_h = 0, bias_stride_q = 0, bias_stride_k = 0;
  float scale = 1.0f;
  // Dropout (see the counter above); seed is device memory on CUDA, nullptr: no dropout.
  const int64_t* seed = nullptr;
  uint32_t threshold = 0;
  float dropout_scale = 1.0f;
  int64_t counter_q = 0, counter_k = 0;
};

// Strided view of a (batch, tokens, heads, dim) or (tokens, heads, dim) activation.
struct AttentionTensor {
  void* data = nullptr;
  int64_t batch_stride = 0, token_stride = 0, head_stride = 0;
};

struct AttentionFwdArgs {
  AttentionProblem p;
  AttentionTensor q, k, v, out;
  float* lse = nullptr;  // (heads, total_q)
};

struct AttentionBwdArgs {
  AttentionProblem p;
  AttentionTensor q, k, v, out, grad_out;
  AttentionTensor grad_q, grad_k, grad_v;  // zero-filled by the caller (masked keys keep 0)
  const float* lse = nullptr;
  float* grad_bias = nullptr;  // (batch, heads, seq_q, seq_k) float32 contiguous, zero-filled; or nullptr
  bool deterministic = false;
};

// Head dims the kernels take: multiples of 8 up to 128.
inline bool attention_head_dim_supported(int64_t d) { return d >= 8 && d <= 128 && d % 8 == 0; }

#if defined(BERTFAST_WITH_CUDA)
// Workspace (bytes) the CUDA backward needs (float32 dq accumulator, row statistics).
int64_t attention_bwd_cuda_workspace_bytes(const AttentionBwdArgs& a);
cudaError_t attention_fwd_cuda(const AttentionFwdArgs& a, DType dtype, cudaStream_t stream);
cudaError_t attention_bwd_cuda(const AttentionBwdArgs& a, DType dtype, void* workspace, cudaStream_t stream);
#endif

}  // namespace bertfast
