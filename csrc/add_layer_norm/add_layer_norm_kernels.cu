// CUDA kernels of add_layer_norm (torch-free: pointers, sizes, a stream).
//
// A group of `tpr` threads (a power of two >= 32) owns a row and keeps it in registers:
// thread `lane` holds vectors lane, lane + tpr, ... (VEC elements each, 16-byte loads on the
// aligned path). Statistics use a two-pass mean/variance over the registers, in fp32.
// The backward accumulates the parameter gradients per thread over the rows its group visits,
// reduces the groups of a block in shared memory, writes one fp32 partial row per block, and a
// second kernel sums those partials in a fixed order: no atomics, so results are deterministic.
#include "../common/cuda_utils.cuh"
#include "../common/philox.h"
#include "add_layer_norm.h"

namespace bertfast {
namespace {

// A block has 256 threads, or one row group of 512 for the widest rows. Each thread holds
// 16 elements of a row, so rows of up to 512 * 16 = 8192 elements fit in registers.
constexpr int kBlockThreads = 256;
constexpr int kMaxThreadsPerRow = 512;
constexpr int kElemsPerThread = 16;

// Vector width (elements per load) and items (loads per thread) of the two paths: 16-byte
// vectors when the pointers and the hidden size allow it, scalars otherwise.
template <typename T>
struct VecPath {
  static constexpr int kVec = 16 / sizeof(T);
  static constexpr int kItems = kElemsPerThread / kVec;
};
struct ScalarPath {
  static constexpr int kVec = 1;
  static constexpr int kItems = kElemsPerThread;
};

int threads_per_row(int64_t hidden, int vec, int items) {
  const int64_t nvec = (hidden + vec - 1) / vec;
  int tpr = 32;
  while (static_cast<int64_t>(tpr) * items < nvec && tpr < kMaxThreadsPerRow) tpr *= 2;
  return tpr;
}

// Sum over the threads of one row group. `scratch` holds one float per warp of the block.
__device__ __forceinline__ float row_group_sum(float v, float* scratch, int tpr) {
  // scratch has room for kMaxThreadsPerRow / 32 warps
  v = warp_sum(v);
  if (tpr == 32) return v;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // earlier readers of scratch are done
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps_per_row = tpr / 32, first = (threadIdx.x / tpr) * warps_per_row;
  float s = 0.0f;
  for (int w = 0; w < warps_per_row; ++w) s += scratch[first + w];  // fixed order
  return s;
}

// Keep flags of elements index .. index+VEC-1 (bit e for element e).
template <int VEC>
__device__ __forceinline__ uint32_t keep_bits(uint64_t seed, uint32_t threshold, uint64_t index) {
  uint32_t bits = 0;
  if constexpr (VEC % 4 == 0) {  // index is a multiple of 4 here: one Philox call per 4
#pragma unroll
    for (int g = 0; g < VEC / 4; ++g) bits |= dropout_keep4(seed, threshold, (index >> 2) + g) << (4 * g);
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) bits |= static_cast<uint32_t>(dropout_keep(seed, threshold, index + e)) << e;
  }
  return bits;
}

// h = residual + dropout(x + x_bias) for the items this thread owns (zeros elsewhere), and
// the dropout keep bits (bit it * VEC + e; ITEMS * VEC <= 32).
template <typename T, typename P, int VEC, int ITEMS>
__device__ __forceinline__ void load_pre_norm(const void* x, const void* residual, const void* x_bias, bool active,
                                              int64_t base, int lane, int tpr, int nvec, bool dropout,
                                              uint64_t seed, uint32_t threshold, float scale, float (&h)[ITEMS][VEC],
                                              uint32_t& keep) {
  static_assert(ITEMS * VEC <= 32, "keep bits must fit in 32 bits");
  keep = 0;
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const int v = lane + it * tpr;
    if (active && v < nvec) {
      float xv[VEC], rv[VEC];
      load_floats<T, VEC>(static_cast<const T*>(x) + base + v * VEC, xv);
      load_floats<T, VEC>(static_cast<const T*>(residual) + base + v * VEC, rv);
      if (x_bias) {
        float bv[VEC];
        load_floats<P, VEC>(static_cast<const P*>(x_bias) + v * VEC, bv);
#pragma unroll
        for (int e = 0; e < VEC; ++e) xv[e] += bv[e];
      }
      if (dropout) {
        const uint32_t bits = keep_bits<VEC>(seed, threshold, base + v * VEC);
        keep |= bits << (it * VEC);
#pragma unroll
        for (int e = 0; e < VEC; ++e) xv[e] = (bits >> e) & 1 ? xv[e] * scale : 0.0f;
      }
#pragma unroll
      for (int e = 0; e < VEC; ++e) h[it][e] = rv[e] + xv[e];
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) h[it][e] = 0.0f;
    }
  }
}

template <typename T, typename P, int VEC, int ITEMS, int MAX_THREADS>
__global__ void __launch_bounds__(MAX_THREADS) add_layer_norm_fwd_kernel(AddLayerNormFwdArgs a, int tpr) {
  __shared__ float scratch[MAX_THREADS / 32];
  const int lane = threadIdx.x % tpr;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / tpr) + threadIdx.x / tpr;
  const bool active = row < a.rows;
  const int H = static_cast<int>(a.hidden), nvec = H / VEC;
  const uint64_t seed = a.seed ? static_cast<uint64_t>(*a.seed) : 0;
  const int64_t base = row * H;

  float h[ITEMS][VEC];
  uint32_t keep = 0;
  load_pre_norm<T, P, VEC, ITEMS>(a.x, a.residual, a.x_bias, active, base, lane, tpr, nvec, a.seed != nullptr, seed,
                                  a.threshold,
                                  a.scale, h, keep);
  float sum = 0.0f;
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) sum += h[it][e];
  }
  const float mean = row_group_sum(sum, scratch, tpr) / H;
  float sq = 0.0f;
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    if (active && lane + it * tpr < nvec) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) sq += (h[it][e] - mean) * (h[it][e] - mean);
    }
  }
  const float rstd = rsqrtf(row_group_sum(sq, scratch, tpr) / H + a.eps);
  if (!active) return;  // no barrier follows
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const int v = lane + it * tpr;
    if (v < nvec) {
      float wv[VEC], bv[VEC], y[VEC];
      load_floats<P, VEC>(static_cast<const P*>(a.weight) + v * VEC, wv);
      load_floats<P, VEC>(static_cast<const P*>(a.bias) + v * VEC, bv);
#pragma unroll
      for (int e = 0; e < VEC; ++e) y[e] = (h[it][e] - mean) * rstd * wv[e] + bv[e];
      store_floats<T, VEC>(static_cast<T*>(a.out) + base + v * VEC, y);
    }
  }
  if (lane == 0) {
    a.mean[row] = mean;
    a.rstd[row] = rstd;
  }
}

// partials: (gridDim.x, 3, hidden) fp32 sums of dy*xhat, dy and dx over the rows of each block.
template <typename T, typename P, int VEC, int ITEMS, int MAX_THREADS>
__global__ void __launch_bounds__(MAX_THREADS) add_layer_norm_bwd_kernel(AddLayerNormBwdArgs a, int tpr) {
  extern __shared__ float smem[];  // blockDim.x * ITEMS * VEC floats, for the block reduction
  __shared__ float scratch[MAX_THREADS / 32];
  const int lane = threadIdx.x % tpr, group = threadIdx.x / tpr, groups = blockDim.x / tpr;
  const int H = static_cast<int>(a.hidden), nvec = H / VEC;
  const bool dropout = a.seed != nullptr;
  const uint64_t seed = dropout ? static_cast<uint64_t>(*a.seed) : 0;
  const int64_t row_groups = (a.rows + groups - 1) / groups;

  // The weight is re-read per row (an L1 hit) rather than held: registers are the limit here.
  float dw[ITEMS][VEC], db[ITEMS][VEC], dxb[ITEMS][VEC];
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) dw[it][e] = db[it][e] = dxb[it][e] = 0.0f;
  }

  // Every thread of the block runs the same number of iterations (barriers inside).
  for (int64_t rg = blockIdx.x; rg < row_groups; rg += gridDim.x) {
    const int64_t row = rg * groups + group;
    const bool active = row < a.rows;
    const int64_t base = row * H;
    const float mean = active ? a.mean[row] : 0.0f, rstd = active ? a.rstd[row] : 0.0f;
    float dy[ITEMS][VEC], xhat[ITEMS][VEC];
    uint32_t keep = 0;
    load_pre_norm<T, P, VEC, ITEMS>(a.x, a.residual, a.x_bias, active, base, lane, tpr, nvec, a.seed != nullptr, seed,
                                  a.threshold,
                                    a.scale, xhat, keep);
    float s_wdy = 0.0f, s_wdy_xhat = 0.0f;
#pragma unroll
    for (int it = 0; it < ITEMS; ++it) {
      const int v = lane + it * tpr;
      if (active && v < nvec) {
        float wv[VEC];
        load_floats<T, VEC>(static_cast<const T*>(a.grad_out) + base + v * VEC, dy[it]);
        load_floats<P, VEC>(static_cast<const P*>(a.weight) + v * VEC, wv);
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          xhat[it][e] = (xhat[it][e] - mean) * rstd;
          const float wdy = wv[e] * dy[it][e];
          s_wdy += wdy;
          s_wdy_xhat += wdy * xhat[it][e];
        }
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) dy[it][e] = xhat[it][e] = 0.0f;
      }
    }
    const float mean_wdy = row_group_sum(s_wdy, scratch, tpr) / H;
    const float mean_wdy_xhat = row_group_sum(s_wdy_xhat, scratch, tpr) / H;
    if (!active) continue;
#pragma unroll
    for (int it = 0; it < ITEMS; ++it) {
      const int v = lane + it * tpr;
      if (v >= nvec) continue;
      float dh[VEC], wv[VEC];
      load_floats<P, VEC>(static_cast<const P*>(a.weight) + v * VEC, wv);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        dh[e] = rstd * (wv[e] * dy[it][e] - mean_wdy - xhat[it][e] * mean_wdy_xhat);
        dw[it][e] += dy[it][e] * xhat[it][e];
        db[it][e] += dy[it][e];
      }
      store_floats<T, VEC>(static_cast<T*>(a.grad_residual) + base + v * VEC, dh);
      if (dropout) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) dh[e] = (keep >> (it * VEC + e)) & 1 ? dh[e] * a.scale : 0.0f;
        store_floats<T, VEC>(static_cast<T*>(a.grad_x) + base + v * VEC, dh);
      }
#pragma unroll
      for (int e = 0; e < VEC; ++e) dxb[it][e] += dh[e];
    }
  }

  // Reduce the row groups of this block (fixed order) and write the block's partial row.
  const int width = tpr * ITEMS * VEC;  // columns covered by one row group, >= H
  float* out = a.partials + static_cast<int64_t>(blockIdx.x) * 3 * H;
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    if (k == 2 && a.grad_x_bias == nullptr) break;
    __syncthreads();
#pragma unroll
    for (int it = 0; it < ITEMS; ++it) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const float val = k == 0 ? dw[it][e] : (k == 1 ? db[it][e] : dxb[it][e]);
        smem[group * width + (lane + it * tpr) * VEC + e] = val;
      }
    }
    __syncthreads();
    for (int col = threadIdx.x; col < H; col += blockDim.x) {
      float s = 0.0f;
      for (int g = 0; g < groups; ++g) s += smem[g * width + col];
      out[k * H + col] = s;
    }
  }
}

// Sums partials (num_partials, 3, hidden) over the first axis in a fixed order.
// Block (32, 8): 32 columns, 8 slices of the partial rows, combined in shared memory.
template <typename P>
__global__ void sum_partials_kernel(const float* partials, int num_partials, int hidden, P* grad_weight,
                                    P* grad_bias, P* grad_x_bias) {
  __shared__ float slice_sums[8][33];
  const int k = blockIdx.y;
  const int col = blockIdx.x * 32 + threadIdx.x;
  float s = 0.0f;
  if (col < hidden) {
    for (int p = threadIdx.y; p < num_partials; p += 8) s += partials[(static_cast<int64_t>(p) * 3 + k) * hidden + col];
  }
  slice_sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < hidden) {
    float total = 0.0f;
#pragma unroll
    for (int y = 0; y < 8; ++y) total += slice_sums[y][threadIdx.x];
    P* dst = k == 0 ? grad_weight : (k == 1 ? grad_bias : grad_x_bias);
    dst[col] = from_float<P>(total);
  }
}

template <typename T, typename P, typename Path>
cudaError_t launch_fwd(const AddLayerNormFwdArgs& a, cudaStream_t stream) {
  const int tpr = threads_per_row(a.hidden, Path::kVec, Path::kItems);
  const int block = tpr > kBlockThreads ? tpr : kBlockThreads;
  const int rows_per_block = block / tpr;
  const int64_t grid = (a.rows + rows_per_block - 1) / rows_per_block;
  if (block > kBlockThreads) {
    add_layer_norm_fwd_kernel<T, P, Path::kVec, Path::kItems, kMaxThreadsPerRow><<<grid, block, 0, stream>>>(a, tpr);
  } else {
    add_layer_norm_fwd_kernel<T, P, Path::kVec, Path::kItems, kBlockThreads><<<grid, block, 0, stream>>>(a, tpr);
  }
  return cudaGetLastError();
}

int bwd_grid(int64_t rows, int rows_per_block, int device) {
  const int64_t row_groups = (rows + rows_per_block - 1) / rows_per_block;
  const int64_t wanted = 2LL * sm_count(device);
  return static_cast<int>(row_groups < wanted ? row_groups : wanted);
}

template <typename T, typename P, typename Path>
cudaError_t launch_bwd(const AddLayerNormBwdArgs& a, int device, cudaStream_t stream) {
  const int tpr = threads_per_row(a.hidden, Path::kVec, Path::kItems);
  const int block = tpr > kBlockThreads ? tpr : kBlockThreads;
  const int grid = bwd_grid(a.rows, block / tpr, device);
  const size_t smem = static_cast<size_t>(block) * Path::kItems * Path::kVec * sizeof(float);
  auto kernel = block > kBlockThreads ? add_layer_norm_bwd_kernel<T, P, Path::kVec, Path::kItems, kMaxThreadsPerRow>
                                      : add_layer_norm_bwd_kernel<T, P, Path::kVec, Path::kItems, kBlockThreads>;
  if (smem > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid, block, smem, stream>>>(a, tpr);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const dim3 sum_grid((a.hidden + 31) / 32, a.grad_x_bias ? 3 : 2);
  sum_partials_kernel<P><<<sum_grid, dim3(32, 8), 0, stream>>>(
      a.partials, grid, static_cast<int>(a.hidden), static_cast<P*>(a.grad_weight), static_cast<P*>(a.grad_bias),
      static_cast<P*>(a.grad_x_bias));
  return cudaGetLastError();
}

// Calls f(T{}, P{}) for the activation and parameter element types.
template <typename F>
void dispatch_act_param(DType act, DType param, F&& f) {
  dispatch_cuda_dtype(act, [&](auto t) {
    using T = decltype(t);
    if (param == DType::kFloat32) f(T{}, float{});
    else f(T{}, T{});
  });
}

}  // namespace

int64_t add_layer_norm_cuda_max_hidden() { return int64_t{kMaxThreadsPerRow} * kElemsPerThread; }

int64_t add_layer_norm_cuda_num_partials(int64_t rows, int64_t hidden, DType act, bool aligned, int device) {
  const int vec = aligned ? (act == DType::kFloat32 ? 4 : 8) : 1;
  const int tpr = threads_per_row(hidden, vec, kElemsPerThread / vec);
  const int block = tpr > kBlockThreads ? tpr : kBlockThreads;
  return bwd_grid(rows, block / tpr, device);
}

cudaError_t add_layer_norm_fwd_cuda(const AddLayerNormFwdArgs& args, DType act, DType param, bool aligned,
                                    cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  dispatch_act_param(act, param, [&](auto t, auto p) {
    using T = decltype(t);
    using P = decltype(p);
    err = aligned ? launch_fwd<T, P, VecPath<T>>(args, stream) : launch_fwd<T, P, ScalarPath>(args, stream);
  });
  return err;
}

cudaError_t add_layer_norm_bwd_cuda(const AddLayerNormBwdArgs& args, DType act, DType param, bool aligned, int device,
                                    cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  dispatch_act_param(act, param, [&](auto t, auto p) {
    using T = decltype(t);
    using P = decltype(p);
    err = aligned ? launch_bwd<T, P, VecPath<T>>(args, device, stream)
                  : launch_bwd<T, P, ScalarPath>(args, device, stream);
  });
  return err;
}

}  // namespace bertfast
