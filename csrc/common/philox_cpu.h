// Dropout keep masks on the CPU, 32 elements per call: Philox for 8 counters at once with
// AVX2 (8 x 32-bit lanes), or one counter at a time on baseline x86-64. The same bits as
// philox.h's dropout_keep (element i: word i % 4 of counter i / 4). Include inside a kernel
// header compiled per CPU capability (see cpu_capability.h).
#pragma once
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

// Keep bits of the 32 elements 4*group .. 4*group+31: bit e for element 4*group + e.
inline uint32_t dropout_keep_bits32(uint64_t seed, uint32_t threshold, uint64_t group) {
  uint32_t words[4][8];  // words[w][l]: word w of counter group + l
#if defined(BERTFAST_PHILOX_AVX2)
  alignas(32) uint32_t lo_init[8], hi_init[8];
  for (int l = 0; l < 8; ++l) {
    lo_init[l] = static_cast<uint32_t>(group + l);
    hi_init[l] = static_cast<uint32_t>((group + l) >> 32);
  }
  __m256i c0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo_init));
  __m256i c1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi_init));
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
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(words[0]), c0);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(words[1]), c1);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(words[2]), c2);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(words[3]), c3);
#else
  for (int l = 0; l < 8; ++l) {
    const Philox4 r = philox4x32_10(group + l, seed);
    for (int w = 0; w < 4; ++w) words[w][l] = r.v[w];
  }
#endif
  uint32_t bits = 0;
  for (int l = 0; l < 8; ++l)
    for (int w = 0; w < 4; ++w) bits |= static_cast<uint32_t>(words[w][l] >= threshold) << (4 * l + w);
  return bits;
}

// mult[j] = scale where element first + j is kept, 0 where dropped, for j < n.
inline void dropout_multipliers(uint64_t seed, uint32_t threshold, float scale, uint64_t first, int64_t n,
                                float* mult) {
  uint64_t i = first;
  int64_t j = 0;
  while (j < n) {
    const uint64_t block_first = (i >> 2) << 2;  // 32 elements from the group holding element i
    const uint32_t bits = dropout_keep_bits32(seed, threshold, i >> 2);
    for (uint64_t e = i - block_first; e < 32 && j < n; ++e, ++i, ++j) mult[j] = (bits >> e) & 1 ? scale : 0.0f;
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace bertfast
