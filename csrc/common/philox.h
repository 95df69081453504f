// Counter-based random numbers (Philox-4x32-10, Salmon et al. 2011), identical on CPU and
// CUDA. Dropout masks are a pure function of (seed, element index): nothing is stored for
// the backward, which regenerates the mask, and CPU and CUDA draw the same mask.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define BERTFAST_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define BERTFAST_HOST_DEVICE inline
#endif

namespace bertfast {

struct Philox4 {
  uint32_t v[4];
};

BERTFAST_HOST_DEVICE void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t product = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
}

// Four 32-bit random words for the 128-bit counter (counter, 0) under a 64-bit key.
BERTFAST_HOST_DEVICE Philox4 philox4x32_10(uint64_t counter, uint64_t key) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(0xD2511F53u, c0, hi0, lo0);
    mulhilo32(0xCD9E8D57u, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// Dropout keeps an element when its 32-bit draw is >= threshold = round(p * 2^32); the kept
// fraction is 1 - p to within 2^-32. Element i of a tensor uses word i % 4 of counter i / 4.
struct DropoutParams {
  uint64_t seed = 0;
  uint32_t threshold = 0;  // 0 means no dropout
  float scale = 1.0f;      // 1 / (1 - p)
};

BERTFAST_HOST_DEVICE bool dropout_keep(uint64_t seed, uint32_t threshold, uint64_t index) {
  const Philox4 r = philox4x32_10(index >> 2, seed);
  return r.v[index & 3] >= threshold;
}

// Keep flags for the four elements 4*group .. 4*group+3 (one Philox call).
BERTFAST_HOST_DEVICE uint32_t dropout_keep4(uint64_t seed, uint32_t threshold, uint64_t group) {
  const Philox4 r = philox4x32_10(group, seed);
  return (r.v[0] >= threshold) | ((r.v[1] >= threshold) << 1) | ((r.v[2] >= threshold) << 2) |
         ((r.v[3] >= threshold) << 3);
}

}  // namespace bertfast
