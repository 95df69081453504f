// softmax + cross-entropy CPU kernels built for AVX-512.
#include "../common/cpu_avx512_begin.h"
#if defined(CPU_CAPABILITY_AVX512)  // x86-64 only: elsewhere the DEFAULT copy is the only one
#include "cross_entropy_cpu_kernels.h"

namespace bertfast::AVX512 {
void cross_entropy_fwd(const CrossEntropyArgs& a, DType dtype) { cross_entropy_fwd_kernel(a, dtype); }
void cross_entropy_bwd(const CrossEntropyArgs& a, DType dtype) { cross_entropy_bwd_kernel(a, dtype); }
void cross_entropy_fwd_bwd(const CrossEntropyArgs& a, DType dtype) { cross_entropy_fwd_bwd_kernel(a, dtype); }
}  // namespace bertfast::AVX512
#endif  // CPU_CAPABILITY_AVX512
