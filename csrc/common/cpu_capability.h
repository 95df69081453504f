// CPU kernels are compiled three times on x86-64: for any x86-64 (DEFAULT), for AVX2+FMA, and
// for AVX-512 (elsewhere, e.g. aarch64, only the DEFAULT copy exists). Each kernel header lives
// in namespace bertfast::CPU_CAPABILITY, like ATen's own kernels, so the copies never collide;
// the glue picks one at run time.
#pragma once
#include <cstdlib>
#include <string>

namespace bertfast {

enum class CpuCapability { kDefault, kAVX2, kAVX512 };

// The best copy this CPU runs. ATEN_CPU_CAPABILITY (torch's own knob: default, avx2, avx512)
// caps it, as it caps ATen's kernels.
inline CpuCapability cpu_capability_in_use() {
#if defined(__x86_64__) || defined(__i386__)
  static const CpuCapability best = [] {
    const bool avx2 =
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    const char* forced = std::getenv("ATEN_CPU_CAPABILITY");
    const std::string cap = forced ? forced : "";
    if (cap == "default") return CpuCapability::kDefault;
    if (avx512 && cap != "avx2") return CpuCapability::kAVX512;
    return avx2 ? CpuCapability::kAVX2 : CpuCapability::kDefault;
  }();
  return best;
#else
  return CpuCapability::kDefault;
#endif
}

}  // namespace bertfast

// Declares the same entry points in each copy's namespace, for the glue that dispatches to them
// (the definitions are the kernel headers' functions, compiled once per copy).
#define BERTFAST_DECLARE_CPU_COPIES(...)   \
  namespace AVX512 { __VA_ARGS__ }         \
  namespace AVX2 { __VA_ARGS__ }           \
  namespace DEFAULT { __VA_ARGS__ }

// Call bertfast::<cap>::fn(args...); BERTFAST_CPU_DISPATCH picks the best capability this CPU has.
#if defined(__x86_64__) || defined(__i386__)
#define BERTFAST_CPU_DISPATCH_TO(cap, fn, ...)                                                 \
  do {                                                                                         \
    switch (cap) {                                                                             \
      case ::bertfast::CpuCapability::kAVX512: ::bertfast::AVX512::fn(__VA_ARGS__); break;     \
      case ::bertfast::CpuCapability::kAVX2: ::bertfast::AVX2::fn(__VA_ARGS__); break;         \
      default: ::bertfast::DEFAULT::fn(__VA_ARGS__); break;                                    \
    }                                                                                          \
  } while (0)
#else
#define BERTFAST_CPU_DISPATCH_TO(cap, fn, ...) ::bertfast::DEFAULT::fn(__VA_ARGS__)
#endif
#define BERTFAST_CPU_DISPATCH(fn, ...) BERTFAST_CPU_DISPATCH_TO(::bertfast::cpu_capability_in_use(), fn, __VA_ARGS__)
