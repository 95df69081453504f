// attention's CPU kernels built for AVX-512.
#include "../common/cpu_avx512_begin.h"
#include "attention_cpu_kernels.h"

namespace bertfast::AVX512 {
void attention_fwd(const AttentionFwdArgs& a, DType dtype) { attention_fwd_kernel(a, dtype); }
void attention_bwd(const AttentionBwdArgs& a, DType dtype) { attention_bwd_kernel(a, dtype); }
}  // namespace bertfast::AVX512
