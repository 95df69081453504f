// Row helpers for CPU kernels: a row of any element type seen as float32, and back.
// Included by kernel headers inside namespace bertfast::CPU_CAPABILITY.
#pragma once
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

namespace bertfast {
namespace CPU_CAPABILITY {

using fVec = at::vec::Vectorized<float>;

// `src` as float32: itself when T is float, else converted into `buf`.
template <typename T>
inline const float* row_as_float(const T* src, float* buf, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    return src;
  } else {
    at::vec::convert(src, buf, n);
    return buf;
  }
}

// Where to compute a float32 result bound for `dst`: `dst` itself when T is float.
template <typename T>
inline float* float_target(T* dst, float* buf) {
  if constexpr (std::is_same_v<T, float>) {
    return dst;
  } else {
    return buf;
  }
}

template <typename T>
inline void store_row(const float* src, T* dst, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    if (src != dst) std::copy(src, src + n, dst);
  } else {
    at::vec::convert(src, dst, n);
  }
}

inline float sum_row(const float* a, int64_t n) {
  return at::vec::reduce_all<float>([](fVec& x, fVec& y) { return x + y; }, a, n);
}

}  // namespace CPU_CAPABILITY
}  // namespace bertfast
