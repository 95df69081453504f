// softmax + cross-entropy CPU kernels built for any x86-64 / other CPU.
// The entry points are defined in cross_entropy_cpu_kernels.h, in namespace bertfast::DEFAULT.
#define CPU_CAPABILITY DEFAULT
#include "cross_entropy_cpu_kernels.h"
