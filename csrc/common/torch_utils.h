// Helpers for the torch-facing glue files (never included by .cu kernel files).
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "dtype.h"
#include "output_cache.h"
#include "philox.h"

namespace bertfast {

inline DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "bertfast: unsupported dtype ", t, " (expected float32, float16 or bfloat16)");
  }
  return DType::kFloat32;
}

// Keep threshold for Philox dropout with probability p in [0, 1).
inline uint32_t dropout_threshold(double p) {
  const double t = std::floor(p * 4294967296.0);
  return t >= 4294967295.0 ? 4294967295u : static_cast<uint32_t>(t);
}

inline float dropout_scale(double p) { return p > 0 ? static_cast<float>(1.0 / (1.0 - p)) : 1.0f; }

// The seed tensor (int64, one element) that keys a dropout mask, checked.
inline void check_seed(const std::optional<at::Tensor>& seed, double dropout_p, const at::Tensor& like,
                       const char* op) {
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, op, ": dropout_p must be in [0, 1), got ", dropout_p);
  if (dropout_p == 0.0) return;
  TORCH_CHECK(seed.has_value(), op, ": dropout_p > 0 needs a seed tensor");
  TORCH_CHECK(seed->scalar_type() == at::kLong && seed->numel() >= 1, op,
              ": seed must be an int64 tensor with one element");
  TORCH_CHECK(seed->device() == like.device(), op, ": seed must be on ", like.device(), ", got ",
              seed->device());
}

}  // namespace bertfast
