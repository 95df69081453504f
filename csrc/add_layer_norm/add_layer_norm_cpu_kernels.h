// CPU kernels of add_layer_norm, compiled once per CPU capability (see common/cpu_capability.h).
// One row at a time in float32 scratch, vectorised with at::vec; rows in parallel.
#pragma once
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/cpu_row_utils.h"
#include "../common/philox.h"
#include "../common/philox_cpu.h"
#include "add_layer_norm.h"

namespace bertfast {
namespace CPU_CAPABILITY {

// Parameters as float32, converted once per call.
template <typename P>
std::vector<float> param_as_float(const void* p, int64_t n) {
  std::vector<float> out(p ? n : 0);
  if (p) {
    const P* src = static_cast<const P*>(p);
    for (int64_t j = 0; j < n; ++j) out[j] = static_cast<float>(src[j]);
  }
  return out;
}

// h = residual + dropout(x + x_bias) for row `r`, in float32, into `h`. `scratch` holds 2 * H
// floats for conversions; with dropout, `mult` (H floats) receives the row's dropout
// multipliers (scale or 0). bwd_row_means recomputes h with the same operations.
template <typename T>
void pre_norm_row(const T* x_all, const T* res_all, const std::vector<float>& xb, int64_t r, int64_t H,
                  const int64_t* seed_ptr, uint32_t threshold, float scale, float* h, float* scratch, float* mult) {
  const float* xf = row_as_float(x_all + r * H, scratch, H);
  const float* rf = row_as_float(res_all + r * H, scratch + H, H);
  if (seed_ptr) {
    dropout_multipliers(static_cast<uint64_t>(*seed_ptr), threshold, scale, static_cast<uint64_t>(r) * H, H, mult);
    if (!xb.empty()) {
      at::vec::map2<float>([](fVec u, fVec v) { return u + v; }, h, xf, xb.data(), H);
      xf = h;
    }
    at::vec::map3<float>([](fVec res, fVec u, fVec m) { return at::vec::fmadd(u, m, res); }, h, rf, xf, mult, H);
  } else if (!xb.empty()) {
    at::vec::map3<float>([](fVec u, fVec v, fVec t) { return u + v + t; }, h, rf, xf, xb.data(), H);
  } else {
    at::vec::map2<float>([](fVec u, fVec v) { return u + v; }, h, rf, xf, H);
  }
}

// Asks for the next row while this one is computed: rows are a few KiB, and the hardware
// prefetcher stops at every 4 KiB page, so without this each row starts with a DRAM wait.
template <typename T>
inline void prefetch_row(const T* row, int64_t n) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t off = 0; off < n * static_cast<int64_t>(sizeof(T)); off += 64) __builtin_prefetch(p + off, 0, 3);
}

template <typename T, typename P>
void add_layer_norm_fwd_impl(const AddLayerNormFwdArgs& a) {
  const int64_t H = a.hidden;
  const std::vector<float> w = param_as_float<P>(a.weight, H), b = param_as_float<P>(a.bias, H),
                           xb = param_as_float<P>(a.x_bias, H);
  at::parallel_for(0, a.rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(5 * H);
    float *h = buf.data(), *scratch = h + H, *ybuf = scratch + 2 * H, *mult = ybuf + H;
    for (int64_t r = begin; r < end; ++r) {
      if (r + 1 < end) {
        prefetch_row(static_cast<const T*>(a.x) + (r + 1) * H, H);
        prefetch_row(static_cast<const T*>(a.residual) + (r + 1) * H, H);
      }
      pre_norm_row(static_cast<const T*>(a.x), static_cast<const T*>(a.residual), xb, r, H, a.seed, a.threshold,
                   a.scale, h, scratch, mult);
      const float mean = sum_row(h, H) / H;
      const float var = at::vec::map_reduce_all<float>(
                            [mean](fVec u) { u = u - fVec(mean); return u * u; },
                            [](fVec& u, fVec& v) { return u + v; }, h, H) / H;
      const float rstd = 1.0f / std::sqrt(var + a.eps);
      T* out = static_cast<T*>(a.out) + r * H;
      float* y = float_target(out, ybuf);
      at::vec::map3<float>(
          [mean, rstd](fVec u, fVec wv, fVec bv) { return at::vec::fmadd((u - fVec(mean)) * fVec(rstd), wv, bv); },
          y, h, w.data(), b.data(), H);
      store_row(y, out, H);
      a.mean[r] = mean;
      a.rstd[r] = rstd;
    }
  });
}

// Rows are split into a number of chunks that depends only on the shape, each with its own
// partial sums for the parameter gradients, reduced in a fixed order: results do not depend
// on the thread count or schedule.
inline int64_t num_chunks(int64_t rows, int64_t hidden) {
  const int64_t by_memory = std::max<int64_t>(1, (8 << 20) / (12 * hidden));
  return std::max<int64_t>(1, std::min<int64_t>({rows, 256, by_memory}));
}

// A vector of n <= fVec::size() floats; the lanes past n load as zero and are never stored.
inline fVec load_n(const float* p, int64_t n) { return n == fVec::size() ? fVec::loadu(p) : fVec::loadu(p, n); }
inline void store_n(const fVec& v, float* p, int64_t n) { n == fVec::size() ? v.store(p) : v.store(p, n); }

// The backward works on blocks of rows so that the parameter-gradient partials are read and
// written once per block rather than once per row.
constexpr int64_t kBwdBlockRows = 4;

// One row of a backward block, all float32 (converted rows for bf16/fp16).
struct BwdRow {
  const float *x, *res, *dy, *mult;  // mult: the dropout multipliers, nullptr without dropout
  float *dh, *dx;                    // outputs; dx: nullptr without dropout
  float mean, rstd;
  float m1, m2;                      // mean(w*dy) and mean(w*dy * x_hat), from bwd_row_means
};

// x_hat at elements j..j+n of a row, with h recomputed exactly as pre_norm_row computes it in
// the forward (same operations, same order). Recomputing from the (cached) inputs is cheaper
// than storing x_hat in pass 1 and reloading it in pass 2.
inline fVec bwd_xhat(const BwdRow& r, const float* xb, int64_t j, int64_t n) {
  const fVec x = load_n(r.x + j, n), res = load_n(r.res + j, n);
  fVec h;
  if (r.mult) h = at::vec::fmadd(xb ? x + load_n(xb + j, n) : x, load_n(r.mult + j, n), res);
  else h = xb ? res + x + load_n(xb + j, n) : res + x;
  return (h - fVec(r.mean)) * fVec(r.rstd);
}

// Pass 1, per row: m1 = mean(w*dy) and m2 = mean(w*dy * x_hat).
inline void bwd_row_means(BwdRow& r, const float* w, const float* xb, int64_t H) {
  constexpr int64_t V = fVec::size();
  fVec sum_wdy(0.0f), sum_wdy_xhat(0.0f);
  for (int64_t j = 0; j < H; j += V) {
    const int64_t n = std::min(V, H - j);
    const fVec wdy = load_n(w + j, n) * load_n(r.dy + j, n);  // 0 in the lanes past n
    sum_wdy = sum_wdy + wdy;
    sum_wdy_xhat = at::vec::fmadd(wdy, bwd_xhat(r, xb, j, n), sum_wdy_xhat);
  }
  const auto add = [](fVec& a, fVec& b) { return a + b; };
  r.m1 = at::vec::vec_reduce_all<float>(add, sum_wdy) / H;
  r.m2 = at::vec::vec_reduce_all<float>(add, sum_wdy_xhat) / H;
}

// Pass 2, column by column across the block's rows:
// dh = rstd * (w*dy - m1 - x_hat * m2), dx = dh * mult, and the partials
// dw += dy * x_hat, db += dy, dxb += dx (dxb: nullptr when grad_x_bias is not wanted).
// `upcoming` (n_upcoming rows of elem_bytes-sized elements) are the next block's input rows:
// pass 2 reads only cached data, so it prefetches them from DRAM meanwhile (pass 1 would
// otherwise wait on DRAM; the hardware prefetcher stops at every 4 KiB page).
inline void bwd_block_columns(const BwdRow* rows, int64_t count, const float* w, const float* xb, int64_t H,
                              float* dw, float* db, float* dxb, const char* const* upcoming, int64_t n_upcoming,
                              int64_t elem_bytes) {
  constexpr int64_t V = fVec::size();
  for (int64_t j = 0; j < H; j += V) {
    const int64_t n = std::min(V, H - j);
    for (int64_t u = 0; u < n_upcoming; ++u) __builtin_prefetch(upcoming[u] + j * elem_bytes, 0, 3);
    const fVec wj = load_n(w + j, n);
    fVec acc_dw(0.0f), acc_db(0.0f), acc_dxb(0.0f);
    for (int64_t i = 0; i < count; ++i) {
      const BwdRow& r = rows[i];
      const fVec xhat = bwd_xhat(r, xb, j, n), dy = load_n(r.dy + j, n);
      const fVec dh = fVec(r.rstd) * (wj * dy - fVec(r.m1) - xhat * fVec(r.m2));
      store_n(dh, r.dh + j, n);
      fVec dx = dh;
      if (r.dx) {
        dx = dh * load_n(r.mult + j, n);
        store_n(dx, r.dx + j, n);
      }
      acc_dw = at::vec::fmadd(dy, xhat, acc_dw);
      acc_db = acc_db + dy;
      acc_dxb = acc_dxb + dx;
    }
    store_n(load_n(dw + j, n) + acc_dw, dw + j, n);
    store_n(load_n(db + j, n) + acc_db, db + j, n);
    if (dxb) store_n(load_n(dxb + j, n) + acc_dxb, dxb + j, n);
  }
}

template <typename T, typename P>
void add_layer_norm_bwd_impl(const AddLayerNormBwdArgs& a) {
  const int64_t H = a.hidden, rows = a.rows;
  const std::vector<float> w = param_as_float<P>(a.weight, H), xb = param_as_float<P>(a.x_bias, H);
  const bool dropout = a.seed != nullptr;
  const int64_t chunks = num_chunks(rows, H);
  std::vector<float> partials(chunks * 3 * H, 0.0f);
  at::parallel_for(0, chunks, 1, [&](int64_t c_begin, int64_t c_end) {
    // Per block row: the dropout multipliers, and for non-float T the converted x, res, dy, dh, dx.
    constexpr int64_t kPerRow = 6;
    std::vector<float> buf(kBwdBlockRows * kPerRow * H);
    BwdRow block[kBwdBlockRows];
    const float* xbp = xb.empty() ? nullptr : xb.data();
    for (int64_t c = c_begin; c < c_end; ++c) {
      float *dw = partials.data() + c * 3 * H, *db = dw + H, *dxb = a.grad_x_bias ? db + H : nullptr;
      const int64_t last = rows * (c + 1) / chunks;
      for (int64_t r0 = rows * c / chunks; r0 < last; r0 += kBwdBlockRows) {
        const int64_t count = std::min(kBwdBlockRows, last - r0);
        for (int64_t i = 0; i < count; ++i) {
          const int64_t r = r0 + i;
          float* s = buf.data() + i * kPerRow * H;
          BwdRow& row = block[i];
          row.mult = nullptr;
          if (dropout) {
            dropout_multipliers(static_cast<uint64_t>(*a.seed), a.threshold, a.scale, static_cast<uint64_t>(r) * H, H, s);
            row.mult = s;
          }
          row.x = row_as_float(static_cast<const T*>(a.x) + r * H, s + H, H);
          row.res = row_as_float(static_cast<const T*>(a.residual) + r * H, s + 2 * H, H);
          row.dy = row_as_float(static_cast<const T*>(a.grad_out) + r * H, s + 3 * H, H);
          row.dh = float_target(static_cast<T*>(a.grad_residual) + r * H, s + 4 * H);
          row.dx = dropout ? float_target(static_cast<T*>(a.grad_x) + r * H, s + 5 * H) : nullptr;
          row.mean = a.mean[r];
          row.rstd = a.rstd[r];
          bwd_row_means(row, w.data(), xbp, H);
        }
        const char* upcoming[3 * kBwdBlockRows];
        int64_t n_upcoming = 0;
        for (int64_t r = r0 + count; r < std::min(rows, r0 + count + kBwdBlockRows); ++r) {
          for (const void* t : {a.x, a.residual, a.grad_out}) {
            upcoming[n_upcoming++] = reinterpret_cast<const char*>(static_cast<const T*>(t) + r * H);
          }
        }
        bwd_block_columns(block, count, w.data(), xbp, H, dw, db, dxb, upcoming, n_upcoming, sizeof(T));
        for (int64_t i = 0; i < count; ++i) {
          const int64_t r = r0 + i;
          store_row(block[i].dh, static_cast<T*>(a.grad_residual) + r * H, H);
          if (dropout) store_row(block[i].dx, static_cast<T*>(a.grad_x) + r * H, H);
        }
      }
    }
  });
  // Fixed-order reduction of the chunks' partial sums.
  P* outs[3] = {static_cast<P*>(a.grad_weight), static_cast<P*>(a.grad_bias), static_cast<P*>(a.grad_x_bias)};
  at::parallel_for(0, H, 256, [&](int64_t j0, int64_t j1) {
    for (int k = 0; k < 3; ++k) {
      if (!outs[k]) continue;
      for (int64_t j = j0; j < j1; ++j) {
        float s = 0.0f;
        for (int64_t c = 0; c < chunks; ++c) s += partials[(c * 3 + k) * H + j];
        outs[k][j] = static_cast<P>(s);
      }
    }
  });
}

template <typename F>
void dispatch_act_param(DType act, DType param, F&& f) {
  auto with_param = [&](auto act_tag) {
    using T = decltype(act_tag);
    if (param == DType::kFloat32) f(T{}, float{});
    else f(T{}, T{});
  };
  switch (act) {
    case DType::kFloat32: f(float{}, float{}); break;
    case DType::kFloat16: with_param(c10::Half{}); break;
    case DType::kBFloat16: with_param(c10::BFloat16{}); break;
  }
}

// The entry points the glue dispatches to: one definition per copy, so this header is included
// only by the layer_norm_cpu_<copy>.cpp files.
void add_layer_norm_fwd(const AddLayerNormFwdArgs& a, DType act, DType param) {
  dispatch_act_param(act, param, [&](auto t, auto p) { add_layer_norm_fwd_impl<decltype(t), decltype(p)>(a); });
}

void add_layer_norm_bwd(const AddLayerNormBwdArgs& a, DType act, DType param) {
  dispatch_act_param(act, param, [&](auto t, auto p) { add_layer_norm_bwd_impl<decltype(t), decltype(p)>(a); });
}

}  // namespace CPU_CAPABILITY
}  // namespace bertfast
