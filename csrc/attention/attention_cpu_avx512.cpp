// attention's CPU kernels built for AVX-512.
#include "../common/cpu_avx512_begin.h"
#if defined(CPU_CAPABILITY_AVX512)  // x86-64 only: elsewhere the DEFAULT copy is the only one
#include "attention_cpu_kernels.h"

namespace bertfast::AVX512 {
void attention_fwd(const AttentionFwdArgs& a, DType dtype) { attention_fwd_kernel(a, dtype); }
void attention_bwd(const AttentionBwdArgs& a, DType dtype) { attention_bwd_kernel(a, dtype); }
}  // namespace bertfast::AVX512
#endif  // CPU_CAPABILITY_AVX512
