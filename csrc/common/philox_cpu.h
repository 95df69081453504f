// Dropout multipliers on the CPU, 32 elements per call: Philox for 8 counters at once with
// AVX2 (8 x 32-bit lanes), or one counter at a time on baseline x86-64. The same draws as
// philox.h's dropout_keep (element i: word i % 4 of counter i / 4). Include inside a kernel
// header compiled per CPU capability (see cpu_capability.h).
#pragma once
#include <algorithm>
#include <cstdint>

#include "philox.h"

// The AVX-512 copy uses the same 8-lane AVX2 code (a 16-lane version is not worth its size).
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#define BERTFAST_PHILOX_AVX2 1
#include <immintrin.h>
#endif

namespace bertfast {
namespace CPU_CAPABILITY {

#if defined(BERTFAST_PHILOX_AVX2)
// (hi, lo) 32-bit halves of m * b for 8 lanes; m is a broadcast constant. _mm256_mul_epu32
// multiplies the even lanes, so the odd lanes are shifted down and done separately.
inline void mulhilo8(__m256i m, __m256i b, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(b, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(b, 32), m);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}
#endif

// mult[e] = scale where element 4*group + e is kept, 0 where dropped, for the 32 elements
// 4*group .. 4*group+31. With AVX2 the 8 counters' words are compared to the threshold in
// vectors and transposed from (word, counter) to element order in registers.
inline void dropout_multipliers32(uint64_t seed, uint32_t threshold, float scale, uint64_t group, float* mult) {
#if defined(BERTFAST_PHILOX_AVX2)
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  // counters group + l as (lo, hi) 32-bit words; the carry into hi when the low word wraps
  const __m256i lo_start = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(group)));
  __m256i c0 = _mm256_add_epi32(lo_start, lane);
  const __m256i wrapped = _mm256_cmpgt_epi32(_mm256_xor_si256(lo_start, _mm256_set1_epi32(INT32_MIN)),
                                             _mm256_xor_si256(c0, _mm256_set1_epi32(INT32_MIN)));
  __m256i c1 = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(group >> 32))), wrapped);
  __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  for (int round = 0; round < 10; ++round) {
    __m256i hi0, lo0, hi1, lo1;
    mulhilo8(m0, c0, hi0, lo0);
    mulhilo8(m1, c2, hi1, lo1);
    const __m256i n0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
    const __m256i n2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  // kept where word >= threshold (unsigned): max(word, threshold) == word
  const __m256i t = _mm256_set1_epi32(static_cast<int>(threshold));
  const __m256 s = _mm256_set1_ps(scale);
  auto keep = [&](__m256i w) { return _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_max_epu32(w, t), w)), s); };
  const __m256 w0 = keep(c0), w1 = keep(c1), w2 = keep(c2), w3 = keep(c3);  // w_k[l]: element 4l + k
  const __m256 t0 = _mm256_unpacklo_ps(w0, w1), t1 = _mm256_unpacklo_ps(w2, w3);
  const __m256 t2 = _mm256_unpackhi_ps(w0, w1), t3 = _mm256_unpackhi_ps(w2, w3);
  const __m256 u0 = _mm256_shuffle_ps(t0, t1, 0x44), u1 = _mm256_shuffle_ps(t0, t1, 0xEE);  // counters 0|4, 1|5
  const __m256 u2 = _mm256_shuffle_ps(t2, t3, 0x44), u3 = _mm256_shuffle_ps(t2, t3, 0xEE);  // counters 2|6, 3|7
  _mm256_storeu_ps(mult, _mm256_permute2f128_ps(u0, u1, 0x20));
  _mm256_storeu_ps(mult + 8, _mm256_permute2f128_ps(u2, u3, 0x20));
  _mm256_storeu_ps(mult + 16, _mm256_permute2f128_ps(u0, u1, 0x31));
  _mm256_storeu_ps(mult + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
#else
  for (int l = 0; l < 8; ++l) {
    const Philox4 r = philox4x32_10(group + l, seed);
    for (int w = 0; w < 4; ++w) mult[4 * l + w] = r.v[w] >= threshold ? scale : 0.0f;
  }
#endif
}

// mult[j] = scale where element first + j is kept, 0 where dropped, for j < n.
inline void dropout_multipliers(uint64_t seed, uint32_t threshold, float scale, uint64_t first, int64_t n,
                                float* mult) {
  const uint64_t skip = first & 3;  // element `first` is word `skip` of its counter
  uint64_t group = first >> 2;
  int64_t j = 0;
  if (skip != 0 || n < 32) {
    float block[32];
    dropout_multipliers32(seed, threshold, scale, group, block);
    const int64_t take = std::min<int64_t>(32 - static_cast<int64_t>(skip), n);
    for (int64_t e = 0; e < take; ++e) mult[e] = block[skip + e];
    j = take;
    group += 8;
  }
  for (; j + 32 <= n; j += 32, group += 8) dropout_multipliers32(seed, threshold, scale, group, mult + j);
  if (j < n) {
    float block[32];
    dropout_multipliers32(seed, threshold, scale, group, block);
    for (int64_t e = 0; j < n; ++e, ++j) mult[j] = block[e];
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace bertfast
