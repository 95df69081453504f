// CPU kernels of softmax + cross-entropy, compiled once per CPU capability (see
// common/cpu_capability.h). Rows in parallel; each row is read in blocks small enough to
// stay in L1, so that the log-sum-exp is one pass over memory (a block's max, then its sum
// of exponentials read back from L1, folded into a running max/sum: the online softmax).
#pragma once
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "../common/cpu_row_utils.h"
#include "cross_entropy.h"

namespace bertfast {
namespace CPU_CAPABILITY {

constexpr int64_t kCeBlock = 2048;  // floats per block: 8 KiB, well inside L1
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// exp with a 20-ulp bound (ATen's, as in its own softmax): about twice as fast as Sleef's
// 1-ulp exp, and far below the rounding of the low-precision logits it serves.
inline fVec fast_exp(fVec x) { return x.exp_u20(); }

// NaN-propagating max, like at::vec::maximum.
inline float nan_max(float a, float b) { return (std::isnan(a) || a > b) ? a : b; }

// Running statistics of a row: max, sum of exp(x - max), and sum of x - ref (for smoothing;
// ref is a value of the row, so that the sum keeps its digits when every logit is large).
struct RowStats {
  float max = kNegInf;
  float sum_exp = 0.0f;
  float sum_x = 0.0f;
  float ref = 0.0f;
  // A +inf logit makes the row's softmax undefined: NaN, as torch's log_softmax gives (never a
  // gradient of zeros beside a NaN).
  bool undefined() const { return max == std::numeric_limits<float>::infinity(); }
  float lse() const { return undefined() ? std::numeric_limits<float>::quiet_NaN() : max + std::log(sum_exp); }
};

// Folds the float block x[0, n) into `st` in two passes over it (from L1): its max, then
// its sum of exp(x - max). Always safe; the fallback of the one-pass version below.
inline void accumulate_block_two_pass(RowStats& st, const float* x, int64_t n) {
  constexpr int64_t V = fVec::size();
  fVec vmax(kNegInf), vsum(0.0f);
  const fVec vref(st.ref);
  int64_t i = 0;
  for (; i + V <= n; i += V) {
    const fVec v = fVec::loadu(x + i);
    vmax = at::vec::maximum(vmax, v);
    vsum = vsum + (v - vref);
  }
  float bmax = at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return at::vec::maximum(a, b); }, vmax);
  float bsum = at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return a + b; }, vsum);
  for (; i < n; ++i) {
    bmax = nan_max(bmax, x[i]);
    bsum += x[i] - st.ref;
  }
  st.sum_x += bsum;
  if (bmax == kNegInf) return;  // every exp(x - max) here is 0
  const float new_max = nan_max(bmax, st.max);
  const fVec vm(new_max);
  fVec acc0(0.0f), acc1(0.0f);  // two chains: the adds do not wait on each other
  i = 0;
  for (; i + 2 * V <= n; i += 2 * V) {
    acc0 = acc0 + fast_exp(fVec::loadu(x + i) - vm);
    acc1 = acc1 + fast_exp(fVec::loadu(x + i + V) - vm);
  }
  for (; i + V <= n; i += V) acc0 = acc0 + fast_exp(fVec::loadu(x + i) - vm);
  float bsum_exp = at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return a + b; }, acc0 + acc1);
  for (; i < n; ++i) bsum_exp += std::exp(x[i] - new_max);
  st.sum_exp = st.sum_exp * std::exp(st.max - new_max) + bsum_exp;  // exp(-inf) = 0 at the start
  st.max = new_max;
}

// exp(x - shift) stays below e^64 when x <= shift + 64: a block of kCeBlock such terms
// cannot overflow float32.
constexpr float kMaxShiftGap = 64.0f;

// Folds the float block x[0, n) into `st` in one pass: exponentials are taken against the
// running max (or the block's first element), known before the block is read, while the
// block's max is tracked on the side; a block whose max overshoots that shift by more than
// kMaxShiftGap (or holds a NaN or starts at -inf) is redone with the two-pass version.
inline void accumulate_block(RowStats& st, const float* x, int64_t n) {
  constexpr int64_t V = fVec::size();
  const float shift = st.max == kNegInf ? x[0] : st.max;
  if (!std::isfinite(shift)) return accumulate_block_two_pass(st, x, n);
  const fVec vshift(shift), vref(st.ref);
  fVec vmax(kNegInf), vsum(0.0f), acc(0.0f);
  int64_t i = 0;
  for (; i + V <= n; i += V) {
    const fVec v = fVec::loadu(x + i);
    vmax = at::vec::maximum(vmax, v);
    vsum = vsum + (v - vref);
    acc = acc + fast_exp(v - vshift);
  }
  float bmax = at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return at::vec::maximum(a, b); }, vmax);
  for (int64_t j = i; j < n; ++j) bmax = nan_max(bmax, x[j]);
  if (!(bmax <= shift + kMaxShiftGap)) return accumulate_block_two_pass(st, x, n);  // also NaN
  float bsum = at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return a + b; }, vsum);
  float bsum_exp = at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return a + b; }, acc);
  for (; i < n; ++i) {
    bsum += x[i] - st.ref;
    bsum_exp += std::exp(x[i] - shift);
  }
  st.sum_x += bsum;
  const float new_max = std::max(st.max, bmax);
  st.sum_exp = st.sum_exp * std::exp(st.max - new_max) + bsum_exp * std::exp(shift - new_max);
  st.max = new_max;
}

template <typename T>
RowStats row_stats(const T* row, int64_t classes, float* buf) {
  RowStats st;
  const float first = static_cast<float>(row[0]);
  st.ref = std::isfinite(first) ? first : 0.0f;
  for (int64_t j = 0; j < classes; j += kCeBlock) {
    const int64_t n = std::min(kCeBlock, classes - j);
    accumulate_block(st, row_as_float(row + j, buf, n), n);
  }
  return st;
}

// Taken relative to the row max: lse - x_label = log(sum_exp) - (x_label - max), and
// lse - mean(x) = log(sum_exp) - (sum(x - ref) / C + (ref - max)), which keep their digits
// when every logit is large (lse and x_label, both near 1e4, would cancel).
inline float row_loss(const RowStats& st, float x_label, int64_t classes, float eps) {
  if (st.undefined()) return std::numeric_limits<float>::quiet_NaN();
  float loss = std::log(st.sum_exp) - (1.0f - eps) * (x_label - st.max);
  if (eps > 0.0f) loss -= eps * (st.sum_x / static_cast<float>(classes) + (st.ref - st.max));  // at 0, sum_x may be inf
  return loss;
}

// grad[j] = (exp(x[j] - lse) - eps / C - (1 - eps) [j == label]) * g; grad may alias x.
template <typename T>
void row_grad(const T* x, T* grad, int64_t classes, int64_t label, float lse, float g, float eps, float* buf) {
  constexpr int64_t V = fVec::size();
  const float x_label = static_cast<float>(x[label]);  // read before an in-place write
  const float offset = g * eps / static_cast<float>(classes);
  const fVec vlse(lse), vg(g), voff(offset);
  for (int64_t j = 0; j < classes; j += kCeBlock) {
    const int64_t n = std::min(kCeBlock, classes - j);
    const float* xf = row_as_float(x + j, buf, n);
    float* out = float_target(grad + j, buf);
    int64_t i = 0;
    for (; i + V <= n; i += V) {
      const fVec p = fast_exp(fVec::loadu(xf + i) - vlse);
      at::vec::fmsub(p, vg, voff).store(out + i);
    }
    for (; i < n; ++i) out[i] = std::exp(xf[i] - lse) * g - offset;
    store_row(out, grad + j, n);
  }
  grad[label] = static_cast<T>((std::exp(x_label - lse) - (1.0f - eps)) * g - offset);
}

template <typename T>
void zero_row(T* grad, int64_t classes) {
  std::fill(grad, grad + classes, static_cast<T>(0.0f));
}

inline bool is_ignored(const CrossEntropyArgs& a, int64_t label) { return label == a.ignore_index; }

// About 64 Ki elements per task, at least one row.
inline int64_t row_grain(int64_t classes) { return std::max<int64_t>(1, (int64_t{1} << 16) / classes); }

template <typename T>
void cross_entropy_fwd_impl(const CrossEntropyArgs& a) {
  const T* logits = static_cast<const T*>(a.logits);
  at::parallel_for(0, a.rows, row_grain(a.classes), [&](int64_t begin, int64_t end) {
    alignas(64) float buf[kCeBlock];
    for (int64_t r = begin; r < end; ++r) {
      const int64_t label = a.labels[r];
      if (is_ignored(a, label)) {
        a.loss[r] = 0.0f;
        a.lse[r] = 0.0f;
        continue;
      }
      const T* row = logits + r * a.classes;
      const RowStats st = row_stats(row, a.classes, buf);
      const float lse = st.lse();
      a.lse[r] = lse;
      a.loss[r] = row_loss(st, static_cast<float>(row[label]), a.classes, a.label_smoothing);
    }
  });
}

template <typename T>
void cross_entropy_bwd_impl(const CrossEntropyArgs& a) {
  const T* logits = static_cast<const T*>(a.logits);
  T* grad = static_cast<T*>(a.grad_logits);
  at::parallel_for(0, a.rows, row_grain(a.classes), [&](int64_t begin, int64_t end) {
    alignas(64) float buf[kCeBlock];
    for (int64_t r = begin; r < end; ++r) {
      const int64_t label = a.labels[r];
      T* grad_row = grad + r * a.classes;
      if (is_ignored(a, label)) {
        zero_row(grad_row, a.classes);
        continue;
      }
      row_grad(logits + r * a.classes, grad_row, a.classes, label, a.lse[r], a.grad_loss[r], a.label_smoothing, buf);
    }
  });
}

// Loss, lse, and the gradient of sum(loss) written over the logits (a row is read from
// memory once for its statistics and again, mostly from L2, for its gradient).
template <typename T>
void cross_entropy_fwd_bwd_impl(const CrossEntropyArgs& a) {
  T* logits = static_cast<T*>(a.grad_logits);
  at::parallel_for(0, a.rows, row_grain(a.classes), [&](int64_t begin, int64_t end) {
    alignas(64) float buf[kCeBlock];
    for (int64_t r = begin; r < end; ++r) {
      const int64_t label = a.labels[r];
      T* row = logits + r * a.classes;
      if (is_ignored(a, label)) {
        a.loss[r] = 0.0f;
        a.lse[r] = 0.0f;
        zero_row(row, a.classes);
        continue;
      }
      const RowStats st = row_stats(row, a.classes, buf);
      const float lse = st.lse();
      a.lse[r] = lse;
      a.loss[r] = row_loss(st, static_cast<float>(row[label]), a.classes, a.label_smoothing);
      row_grad(row, row, a.classes, label, lse, 1.0f, a.label_smoothing, buf);
    }
  });
}

template <typename F>
void dispatch_logits_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat16: f(c10::Half{}); break;
    case DType::kBFloat16: f(c10::BFloat16{}); break;
  }
}

// The entry points the glue dispatches to: one definition per copy, so this header is included
// only by the cross_entropy_cpu_<copy>.cpp files.
void cross_entropy_fwd(const CrossEntropyArgs& a, DType dtype) {
  dispatch_logits_dtype(dtype, [&](auto t) { cross_entropy_fwd_impl<decltype(t)>(a); });
}
void cross_entropy_bwd(const CrossEntropyArgs& a, DType dtype) {
  dispatch_logits_dtype(dtype, [&](auto t) { cross_entropy_bwd_impl<decltype(t)>(a); });
}
void cross_entropy_fwd_bwd(const CrossEntropyArgs& a, DType dtype) {
  dispatch_logits_dtype(dtype, [&](auto t) { cross_entropy_fwd_bwd_impl<decltype(t)>(a); });
}

}  // namespace CPU_CAPABILITY
}  // namespace bertfast
