// Checks philox_cpu.h's dropout multipliers against philox.h's scalar dropout_keep, for the
// copy it is compiled as (-DCPU_CAPABILITY_AVX2 -mavx2: the 8-lane Philox, else the scalar one):
// groups whose low counter word wraps into the high word, starts at every word of a counter,
// lengths around the 32-element blocks. Prints "ok" and exits 0, or the first mismatch.
#include <cstdint>
#include <cstdio>
#include <vector>

#if defined(CPU_CAPABILITY_AVX2)
#define CPU_CAPABILITY AVX2
#else
#define CPU_CAPABILITY DEFAULT
#endif
#include "../../csrc/common/philox_cpu.h"

int main() {
  using namespace bertfast;
  const uint64_t seeds[] = {0, 1, 0x9E3779B97F4A7C15ull, 123456789};
  const uint32_t thresholds[] = {1, 429496730u, 2147483648u, 4294967295u};  // p about 0, 0.1, 0.5, 1
  const uint64_t firsts[] = {0, 1, 2, 3, 5, 31, 4ull * 0xFFFFFFFCull + 1, 4ull * 0xFFFFFFF9ull, 4ull * 0x1FFFFFFFEull + 3,
                             (1ull << 40) + 6};
  const int64_t lengths[] = {1, 3, 31, 32, 33, 64, 100, 129};
  std::vector<float> mult(256);
  for (uint64_t seed : seeds)
    for (uint32_t threshold : thresholds)
      for (uint64_t first : firsts)
        for (int64_t n : lengths) {
          CPU_CAPABILITY::dropout_multipliers(seed, threshold, 2.5f, first, n, mult.data());
          for (int64_t j = 0; j < n; ++j) {
            const float expected = dropout_keep(seed, threshold, first + j) ? 2.5f : 0.0f;
            if (mult[j] != expected) {
              std::printf("mismatch: seed %llu threshold %u first %llu n %lld element %lld: %g, expected %g\n",
                          (unsigned long long)seed, threshold, (unsigned long long)first, (long long)n, (long long)j,
                          mult[j], expected);
              return 1;
            }
          }
        }
  std::printf("ok\n");
  return 0;
}
