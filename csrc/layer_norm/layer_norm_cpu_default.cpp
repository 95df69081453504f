// add_layer_norm's CPU kernels built for any x86-64 / other CPU.
#define CPU_CAPABILITY DEFAULT
#include "layer_norm_cpu_kernels.h"

namespace bertfast::DEFAULT {
void add_layer_norm_fwd(const AddLayerNormFwdArgs& a, DType act, DType param) { add_layer_norm_fwd_kernel(a, act, param); }
void add_layer_norm_bwd(const AddLayerNormBwdArgs& a, DType act, DType param) { add_layer_norm_bwd_kernel(a, act, param); }
}  // namespace bertfast::DEFAULT
