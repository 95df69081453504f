// attention's CPU kernels built for any x86-64 / other CPU.
// The entry points are defined in attention_cpu_kernels.h, in namespace bertfast::DEFAULT.
#define CPU_CAPABILITY DEFAULT
#include "attention_cpu_kernels.h"
