// The macros -mavx2 -mfma -mf16c would define, for files compiled under a target pragma
// (cpu_avx2_begin.h, cpu_avx512_begin.h): ATen's and Sleef's headers choose their code by them.
#pragma once
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
