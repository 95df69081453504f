// add_layer_norm's CPU kernels built for AVX2+FMA.
// The entry points are defined in add_layer_norm_cpu_kernels.h, in namespace bertfast::AVX2.
#include "../common/cpu_avx2_begin.h"
#if defined(CPU_CAPABILITY_AVX2)  // x86-64 only: elsewhere the DEFAULT copy is the only one
#include "add_layer_norm_cpu_kernels.h"
#endif
