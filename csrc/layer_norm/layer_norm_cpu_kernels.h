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
#include "layer_norm.h"

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
// multipliers (scale or 0), which the backward reuses for grad_x. Shared by the forward and
// the backward, which recomputes h rather than storing it.
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

template <typename T, typename P>
void add_layer_norm_fwd_impl(const AddLayerNormFwdArgs& a) {
  const int64_t H = a.hidden;
  const std::vector<float> w = param_as_float<P>(a.weight, H), b = param_as_float<P>(a.bias, H),
                           xb = param_as_float<P>(a.x_bias, H);
  at::parallel_for(0, a.rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(5 * H);
    float *h = buf.data(), *scratch = h + H, *ybuf = scratch + 2 * H, *mult = ybuf + H;
    for (int64_t r = begin; r < end; ++r) {
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

template <typename T, typename P>
void add_layer_norm_bwd_impl(const AddLayerNormBwdArgs& a) {
  const int64_t H = a.hidden, rows = a.rows;
  const std::vector<float> w = param_as_float<P>(a.weight, H), xb = param_as_float<P>(a.x_bias, H);
  const bool dropout = a.seed != nullptr;
  const int64_t chunks = num_chunks(rows, H);
  std::vector<float> partials(chunks * 3 * H, 0.0f);
  at::parallel_for(0, chunks, 1, [&](int64_t c_begin, int64_t c_end) {
    std::vector<float> buf(8 * H);
    float *dybuf = buf.data(), *xhat = dybuf + H, *wdy = xhat + H, *dhbuf = wdy + H, *dxbuf = dhbuf + H,
          *mult = dxbuf + H, *scratch = mult + H;
    for (int64_t c = c_begin; c < c_end; ++c) {
      float *dw = partials.data() + c * 3 * H, *db = dw + H, *dxb = db + H;
      for (int64_t r = rows * c / chunks; r < rows * (c + 1) / chunks; ++r) {
        const float mean = a.mean[r], rstd = a.rstd[r];
        pre_norm_row(static_cast<const T*>(a.x), static_cast<const T*>(a.residual), xb, r, H, a.seed, a.threshold,
                     a.scale, xhat, scratch, mult);
        at::vec::map<float>([mean, rstd](fVec u) { return (u - fVec(mean)) * fVec(rstd); }, xhat, xhat, H);
        const float* dy = row_as_float(static_cast<const T*>(a.grad_out) + r * H, dybuf, H);
        at::vec::map2<float>([](fVec u, fVec v) { return u * v; }, wdy, w.data(), dy, H);
        const float mean_wdy = sum_row(wdy, H) / H;
        const float mean_wdy_xhat = at::vec::map2_reduce_all<float>(
                                        [](fVec u, fVec v) { return u * v; },
                                        [](fVec& u, fVec& v) { return u + v; }, wdy, xhat, H) / H;
        T* dh_out = static_cast<T*>(a.grad_residual) + r * H;
        float* dh = float_target(dh_out, dhbuf);
        at::vec::map2<float>(
            [=](fVec g, fVec xh) { return fVec(rstd) * (g - fVec(mean_wdy) - xh * fVec(mean_wdy_xhat)); }, dh, wdy,
            xhat, H);
        at::vec::map3<float>([](fVec acc, fVec g, fVec xh) { return at::vec::fmadd(g, xh, acc); }, dw, dw, dy, xhat, H);
        at::vec::map2<float>([](fVec acc, fVec g) { return acc + g; }, db, db, dy, H);
        const float* dx = dh;
        if (dropout) {
          T* dx_out = static_cast<T*>(a.grad_x) + r * H;
          float* dxf = float_target(dx_out, dxbuf);
          at::vec::map2<float>([](fVec g, fVec m) { return g * m; }, dxf, dh, mult, H);
          store_row(dxf, dx_out, H);
          dx = dxf;
        }
        if (a.grad_x_bias) at::vec::map2<float>([](fVec acc, fVec g) { return acc + g; }, dxb, dxb, dx, H);
        store_row(dh, dh_out, H);
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

inline void add_layer_norm_fwd_kernel(const AddLayerNormFwdArgs& a, DType act, DType param) {
  dispatch_act_param(act, param, [&](auto t, auto p) { add_layer_norm_fwd_impl<decltype(t), decltype(p)>(a); });
}

inline void add_layer_norm_bwd_kernel(const AddLayerNormBwdArgs& a, DType act, DType param) {
  dispatch_act_param(act, param, [&](auto t, auto p) { add_layer_norm_bwd_impl<decltype(t), decltype(p)>(a); });
}

}  // namespace CPU_CAPABILITY
}  // namespace bertfast
