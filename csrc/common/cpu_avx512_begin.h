// Include first in a *_cpu_avx512.cpp file: compiles what follows for AVX-512 (F, BW, VL, DQ,
// the set ATen's own AVX512 kernels need), like cpu_avx2_begin.h does for AVX2.
#pragma once
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx,avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")
#include "cpu_avx2_macros.h"
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#endif
