// add_layer_norm's CPU kernels built for any x86-64 / other CPU.
// The entry points are defined in add_layer_norm_cpu_kernels.h, in namespace bertfast::DEFAULT.
#define CPU_CAPABILITY DEFAULT
#include "add_layer_norm_cpu_kernels.h"
