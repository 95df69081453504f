// CPU kernels of attention, compiled once per CPU capability (see common/cpu_capability.h).
//
// Forward: one task per (sequence, head, tile of kQueryTile queries), in parallel. The query
// tile is packed transposed and pre-scaled (Qt, dim x queries), so a key tile's scores come
// out transposed, S^T (keys x queries): the softmax statistics of a query are then reduced
// across rows, element-wise on vectors of queries, with no horizontal sums. Online softmax
// over key tiles keeps the running max m, sum l and an unnormalised output O (queries x dim);
// the (seq x seq) matrix never exists. The forward saves lse = m + log(l).
//
// Backward: one task per (sequence, head); key tiles outer (dK, dV accumulate in a tile),
// query tiles inner (dQ accumulates for the whole sequence), recomputing P = exp(S - lse) as
// flash-attention 2 does, with Dvec = rowsum(dO * O). The order of every sum is fixed, so the
// CPU backward is always deterministic.
//
// Masked keys are skipped, not computed: each sequence's attendable keys form a list, and a
// tile of that list is gathered into a contiguous float32 buffer.
#pragma once
#include "attention_cpu_bwd.h"
#include "attention_cpu_fwd.h"

namespace bertfast {
namespace CPU_CAPABILITY {

// The entry points the glue dispatches to: one definition per copy, so this header is included
// only by the attention_cpu_<copy>.cpp files.
void attention_fwd(const AttentionFwdArgs& a, DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return attention_fwd_impl<float>(a);
    case DType::kBFloat16: return attention_fwd_impl<c10::BFloat16>(a);
    case DType::kFloat16: return attention_fwd_impl<c10::Half>(a);
  }
}

void attention_bwd(const AttentionBwdArgs& a, DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return attention_bwd_impl<float>(a);
    case DType::kBFloat16: return attention_bwd_impl<c10::BFloat16>(a);
    case DType::kFloat16: return attention_bwd_impl<c10::Half>(a);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace bertfast
