// Helpers for the torch-facing glue files (never included by .cu kernel files).
#pragma once
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

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

// `name` of op `op` holds float32, float16 or bfloat16 (the dtypes the kernels take).
inline void check_float_dtype(const at::Tensor& t, const char* name, const char* op) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kHalf || s == at::kBFloat16, op, ": ", name,
                   " must be float32, float16 or bfloat16, got ", s);
}

// `name` is on the device of `ref_name` (as torch's own ops require: one device per call). A
// meta or CUDA tensor among CPU ones would otherwise hand a kernel memory it cannot read.
inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name,
                              const char* op) {
  TORCH_CHECK(t.device() == ref.device(), op, ": expected all tensors on one device, but ", name, " is on ",
              t.device(), " and ", ref_name, " on ", ref.device());
}

// A tensor written in place (`name`) has no two elements in one memory location and shares
// none with a tensor the same call reads (`read_name`): the kernels read those while writing
// (as at::assert_no_internal_overlap / at::assert_no_overlap, but naming the arguments).
inline void check_no_internal_overlap(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK(at::has_internal_overlap(t) != at::MemOverlap::Yes, op, ": ", name,
              " is written in place but several of its elements share one memory location (an expanded view?); "
              "pass a tensor that owns its memory (clone() it)");
}

inline void check_no_overlap(const at::Tensor& written, const char* name, const at::Tensor& read,
                             const char* read_name, const char* op) {
  const at::MemOverlapStatus s = at::get_overlap_status(written, read);
  TORCH_CHECK(s != at::MemOverlapStatus::Full && s != at::MemOverlapStatus::Partial, op, ": ", name,
              " is written in place but shares memory with ", read_name,
              ", which the same call reads; pass them in separate memory (clone() one)");
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
  TORCH_CHECK_VALUE(seed->scalar_type() == at::kLong && seed->numel() >= 1, op,
                    ": seed must be an int64 tensor with one element, got ", seed->scalar_type(), " of shape ",
                    seed->sizes());
  check_same_device(*seed, "seed", like, "the inputs", op);
}

}  // namespace bertfast
