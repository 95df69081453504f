// attention's CPU kernels built for any x86-64 / other CPU.
#define CPU_CAPABILITY DEFAULT
#include "attention_cpu_kernels.h"

namespace bertfast::DEFAULT {
void attention_fwd(const AttentionFwdArgs& a, DType dtype) { attention_fwd_kernel(a, dtype); }
void attention_bwd(const AttentionBwdArgs& a, DType dtype) { attention_bwd_kernel(a, dtype); }
}  // namespace bertfast::DEFAULT
