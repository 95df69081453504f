// Include first in a *_cpu_avx2.cpp file: compiles what follows for AVX2+FMA (see
// cpu_capability.h). The build has no per-file flags, so the target pragma stands in for
// -mavx2 -mfma -mf16c, and the macros those flags would define are set by hand (ATen's and
// Sleef's headers choose their AVX2 code by them).
#pragma once
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx,avx2,fma,f16c")
#include "cpu_avx2_macros.h"
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif
