// CPU kernels are compiled twice: once for any x86-64 (DEFAULT) and once for AVX2+FMA. Each
// kernel header lives in namespace bertfast::CPU_CAPABILITY, like ATen's own kernels, so the
// two copies never collide; the glue picks one at run time.
#pragma once
#include <cstdlib>
#include <string>

namespace bertfast {

// ATEN_CPU_CAPABILITY=default (torch's own knob) forces the baseline kernels, as in ATen.
inline bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = [] {
    const char* forced = std::getenv("ATEN_CPU_CAPABILITY");
    if (forced && std::string(forced) == "default") return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }();
  return has;
#else
  return false;
#endif
}

}  // namespace bertfast

// Call bertfast::<capability>::fn(args...) for the best capability this CPU has.
#if defined(__x86_64__) || defined(__i386__)
#define BERTFAST_CPU_DISPATCH(fn, ...) \
  (::bertfast::cpu_has_avx2() ? ::bertfast::AVX2::fn(__VA_ARGS__) : ::bertfast::DEFAULT::fn(__VA_ARGS__))
#else
#define BERTFAST_CPU_DISPATCH(fn, ...) ::bertfast::DEFAULT::fn(__VA_ARGS__)
#endif
