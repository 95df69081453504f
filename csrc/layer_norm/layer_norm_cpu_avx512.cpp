// add_layer_norm's CPU kernels built for AVX-512.
#include "../common/cpu_avx512_begin.h"
#if defined(CPU_CAPABILITY_AVX512)  // x86-64 only: elsewhere the DEFAULT copy is the only one
#include "layer_norm_cpu_kernels.h"

namespace bertfast::AVX512 {
void add_layer_norm_fwd(const AddLayerNormFwdArgs& a, DType act, DType param) { add_layer_norm_fwd_kernel(a, act, param); }
void add_layer_norm_bwd(const AddLayerNormBwdArgs& a, DType act, DType param) { add_layer_norm_bwd_kernel(a, act, param); }
}  // namespace bertfast::AVX512
#endif  // CPU_CAPABILITY_AVX512
