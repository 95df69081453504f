// softmax + cross-entropy CPU kernels built for any x86-64 / other CPU.
#define CPU_CAPABILITY DEFAULT
#include "cross_entropy_cpu_kernels.h"

namespace bertfast::DEFAULT {
void cross_entropy_fwd(const CrossEntropyArgs& a, DType dtype) { cross_entropy_fwd_kernel(a, dtype); }
void cross_entropy_bwd(const CrossEntropyArgs& a, DType dtype) { cross_entropy_bwd_kernel(a, dtype); }
void cross_entropy_fwd_bwd(const CrossEntropyArgs& a, DType dtype) { cross_entropy_fwd_bwd_kernel(a, dtype); }
}  // namespace bertfast::DEFAULT
