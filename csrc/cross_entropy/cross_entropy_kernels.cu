// CUDA kernels of softmax + cross-entropy (see cross_entropy.h for the math). Torch-free:
// raw pointers, sizes and a cudaStream_t.
//
// A row is handled by a group of threads: one warp for small class counts (several rows per
// block), a whole block otherwise. The group reads the row with 16-byte loads: a few scalar
// elements up to the first 16-byte boundary (rows of odd length start anywhere), 16-byte
// vectors, then a scalar tail. Statistics are fp32 with an online max and sum of
// exponentials (one pass), kept in the log2 domain so that every exponential is one exp2.
//
// Labels outside [0, classes) that are not ignore_index fail a device-side assert in the
// forward (no host synchronisation): the next synchronising CUDA call reports "device-side
// assert triggered" and the assert message, printed by the device, names this op.
#ifdef NDEBUG
#undef NDEBUG  // the label check below is an assert that must stay in release builds
#endif
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cassert>
#include <cstdint>

#include "cross_entropy.h"

namespace bertfast {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kBlockThreads = 256;
constexpr int kWarp = 32;

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float(float v) { return v; }
template <> __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float(float v) { return v; }
template <> __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }

// kVec elements of T in one load: 16 bytes, or one element on the unaligned fallback path.
template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

// A row split into: `head` scalars up to a 16-byte boundary, `vectors` packs, then scalars.
struct RowSplit {
  int64_t head, vectors, tail_start;
};

template <typename T, int kVec>
__device__ __forceinline__ RowSplit split_row(const T* row, int64_t classes) {
  const int64_t offset = static_cast<int64_t>((reinterpret_cast<uintptr_t>(row) / sizeof(T)) % kVec);
  const int64_t to_boundary = offset == 0 ? 0 : kVec - offset;
  const int64_t head = to_boundary < classes ? to_boundary : classes;
  const int64_t vectors = (classes - head) / kVec;
  return {head, vectors, head + vectors * kVec};
}

// Running statistics: m = max of x * log2(e), s = sum of 2^(x * log2(e) - m), sx = sum of
// x - ref (ref: a value of the row, so that sx keeps its digits when every logit is large).
struct Stats {
  float m, s, sx;
};

__device__ __forceinline__ Stats combine(const Stats& a, const Stats& b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.0f, a.sx + b.sx};
  return {m, a.s * exp2f(a.m - m) + b.s * exp2f(b.m - m), a.sx + b.sx};
}

template <int K>
__device__ __forceinline__ void accumulate(Stats& st, const float (&x)[K], float ref) {
  float t[K];
  float vmax = -INFINITY;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    t[k] = x[k] * kLog2e;
    vmax = fmaxf(vmax, t[k]);
    st.sx += x[k] - ref;
  }
  if (vmax == -INFINITY) return;  // every term is 0
  const float m = fmaxf(st.m, vmax);
  float s = st.s * exp2f(st.m - m);
#pragma unroll
  for (int k = 0; k < K; ++k) s += exp2f(t[k] - m);
  st.m = m;
  st.s = s;
}

__device__ __forceinline__ Stats warp_reduce(Stats st) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const Stats other{__shfl_xor_sync(0xffffffffu, st.m, offset), __shfl_xor_sync(0xffffffffu, st.s, offset),
                      __shfl_xor_sync(0xffffffffu, st.sx, offset)};
    st = combine(st, other);
  }
  return st;
}

// Reduction over the group that owns a row; every thread of the group gets the result.
template <int kGroup>
__device__ __forceinline__ Stats group_reduce(Stats st) {
  st = warp_reduce(st);
  if constexpr (kGroup > kWarp) {
    __shared__ Stats partial[kGroup / kWarp];
    const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    if (lane == 0) partial[warp] = st;
    __syncthreads();
    st = partial[0];
#pragma unroll
    for (int w = 1; w < kGroup / kWarp; ++w) st = combine(st, partial[w]);
    __syncthreads();  // `partial` is reused by the next row
  }
  return st;
}

// Row statistics of `row`, reduced over the group (lane = thread index within the group).
template <typename T, int kVec, int kGroup>
__device__ __forceinline__ Stats row_stats(const T* row, int64_t classes, int lane, float ref) {
  Stats st{-INFINITY, 0.0f, 0.0f};
  const RowSplit sp = split_row<T, kVec>(row, classes);
  for (int64_t j = lane; j < sp.head; j += kGroup) accumulate<1>(st, {to_float(row[j])}, ref);
  const Pack<T, kVec>* packs = reinterpret_cast<const Pack<T, kVec>*>(row + sp.head);
  for (int64_t v = lane; v < sp.vectors; v += kGroup) {
    const Pack<T, kVec> p = packs[v];
    float x[kVec];
#pragma unroll
    for (int k = 0; k < kVec; ++k) x[k] = to_float(p.v[k]);
    accumulate<kVec>(st, x, ref);
  }
  for (int64_t j = sp.tail_start + lane; j < classes; j += kGroup) accumulate<1>(st, {to_float(row[j])}, ref);
  return group_reduce<kGroup>(st);
}

// The label check lives in its own small kernel, launched before the kernels that index a
// row by its label: an assert is a function call, and inside the main kernels it would cost
// a register spill. The main kernels clamp the index, so they never read out of bounds.
__global__ void check_labels_kernel(const int64_t* labels, int64_t rows, int64_t classes, int64_t ignore_index) {
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t label = labels[r];
    assert(((void)"bertfast softmax_cross_entropy: a label is outside [0, classes) and is not ignore_index",
            label == ignore_index || (label >= 0 && label < classes)));
  }
}

__device__ __forceinline__ int64_t clamp_label(int64_t label, int64_t classes) {
  return label < 0 ? 0 : (label >= classes ? classes - 1 : label);
}

// Gradient of one element: (softmax - eps / C - (1 - eps) [j == label]) * g.
struct GradCoeffs {
  float lse2;      // lse * log2(e)
  float g;         // upstream gradient of the row
  float offset;    // g * eps / C
  float on_label;  // g * (1 - eps)
  int64_t label;
  __device__ __forceinline__ float operator()(float x, int64_t j) const {
    const float v = exp2f(fmaf(x, kLog2e, -lse2)) * g - offset;
    return j == label ? v - on_label : v;
  }
};

// Writes the gradient of a row (grad may alias row); a row of zeros when `zero`.
template <typename T, int kVec, int kGroup>
__device__ __forceinline__ void write_row_grad(const T* row, T* grad, int64_t classes, int lane, const GradCoeffs& c,
                                               bool zero) {
  const RowSplit sp = split_row<T, kVec>(grad, classes);  // the launcher guarantees row and grad split alike
  for (int64_t j = lane; j < sp.head; j += kGroup) grad[j] = from_float<T>(zero ? 0.0f : c(to_float(row[j]), j));
  const Pack<T, kVec>* in = reinterpret_cast<const Pack<T, kVec>*>(row + sp.head);
  Pack<T, kVec>* out = reinterpret_cast<Pack<T, kVec>*>(grad + sp.head);
  for (int64_t v = lane; v < sp.vectors; v += kGroup) {
    Pack<T, kVec> p;
    if (zero) {
#pragma unroll
      for (int k = 0; k < kVec; ++k) p.v[k] = from_float<T>(0.0f);
    } else {
      p = in[v];
      const int64_t j0 = sp.head + v * kVec;
#pragma unroll
      for (int k = 0; k < kVec; ++k) p.v[k] = from_float<T>(c(to_float(p.v[k]), j0 + k));
    }
    out[v] = p;
  }
  for (int64_t j = sp.tail_start + lane; j < classes; j += kGroup)
    grad[j] = from_float<T>(zero ? 0.0f : c(to_float(row[j]), j));
}

// Which row a group works on, and how to step: warp groups pack several rows per block.
template <int kGroup>
struct RowSchedule {
  static constexpr int kGroupsPerBlock = kBlockThreads / kGroup;
  __device__ static int64_t first() {
    return static_cast<int64_t>(blockIdx.x) * kGroupsPerBlock + threadIdx.x / kGroup;
  }
  __device__ static int64_t stride() { return static_cast<int64_t>(gridDim.x) * kGroupsPerBlock; }
  __device__ static int lane() { return threadIdx.x % kGroup; }
};

// kMode 0: forward (loss, lse). 1: backward (grad from lse and grad_loss). 2: both (grad_loss = 1).
template <typename T, int kVec, int kGroup, int kMode>
__global__ void __launch_bounds__(kBlockThreads) cross_entropy_kernel(CrossEntropyArgs a) {
  using S = RowSchedule<kGroup>;
  const int lane = S::lane();
  const float eps = a.label_smoothing;
  const float inv_classes = 1.0f / static_cast<float>(a.classes);
  for (int64_t r = S::first(); r < a.rows; r += S::stride()) {
    const T* row = static_cast<const T*>(a.logits) + r * a.classes;
    T* grad = kMode == 0 ? nullptr : static_cast<T*>(a.grad_logits) + r * a.classes;
    const int64_t label = a.labels[r];
    const bool ignored = label == a.ignore_index;
    float lse = 0.0f;
    if (kMode != 1) {
      if (ignored) {
        if (lane == 0) a.loss[r] = a.lse[r] = 0.0f;
      } else {
        const float first = to_float(row[0]);
        const float ref = fabsf(first) < INFINITY ? first : 0.0f;  // false for inf and nan
        const Stats st = row_stats<T, kVec, kGroup>(row, a.classes, lane, ref);
        const bool undefined = st.m == INFINITY;  // a +inf logit: NaN, as torch's log_softmax gives
        lse = undefined ? NAN : (st.m + log2f(st.s)) * kLn2;
        if (lane == 0) {  // log2 units relative to the max: lse - x_label would cancel for large logits
          const float x_label = to_float(row[clamp_label(label, a.classes)]);
          float loss = log2f(st.s) - (1.0f - eps) * fmaf(x_label, kLog2e, -st.m);
          if (eps > 0.0f) loss -= eps * fmaf(st.sx * inv_classes, kLog2e, fmaf(ref, kLog2e, -st.m));  // sx may be inf
          a.loss[r] = undefined ? NAN : loss * kLn2;
          a.lse[r] = lse;
        }
      }
      if (kMode == 0) continue;
      // In mode 2 lane 0 read row[label] above: make every read of the row finish before
      // any thread overwrites it (grad aliases row).
      if constexpr (kGroup > kWarp) __syncthreads(); else __syncwarp();
    } else if (!ignored) {
      lse = a.lse[r];
    }
    const float g = kMode == 1 ? a.grad_loss[r] : 1.0f;
    const GradCoeffs c{lse * kLog2e, g, g * eps * inv_classes, g * (1.0f - eps), label};
    write_row_grad<T, kVec, kGroup>(row, grad, a.classes, lane, c, ignored);
  }
}

template <typename T, int kVec, int kMode>
cudaError_t launch_for_group(const CrossEntropyArgs& a, cudaStream_t stream) {
  constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // rows beyond this loop inside the kernel
  if (a.classes <= 1024) {
    constexpr int per_block = kBlockThreads / kWarp;
    const int64_t blocks = (a.rows + per_block - 1) / per_block;
    cross_entropy_kernel<T, kVec, kWarp, kMode>
        <<<static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks), kBlockThreads, 0, stream>>>(a);
  } else {
    cross_entropy_kernel<T, kVec, kBlockThreads, kMode>
        <<<static_cast<unsigned>(a.rows < kMaxBlocks ? a.rows : kMaxBlocks), kBlockThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

// 16-byte packs when the logits and the gradient sit at the same offset from a 16-byte
// boundary (always, for tensors torch allocated); elementwise otherwise.
template <int kMode>
cudaError_t launch(const CrossEntropyArgs& a, DType dtype, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  if (kMode != 1) {  // the backward only compares indices with the label: no out-of-bounds read
    const int64_t blocks = (a.rows + kBlockThreads - 1) / kBlockThreads;
    check_labels_kernel<<<static_cast<unsigned>(blocks < 1024 ? blocks : 1024), kBlockThreads, 0, stream>>>(
        a.labels, a.rows, a.classes, a.ignore_index);
  }
  const uintptr_t in = reinterpret_cast<uintptr_t>(a.logits) % 16;
  const bool vector_ok = kMode == 0 || in == reinterpret_cast<uintptr_t>(a.grad_logits) % 16;
  switch (dtype) {
    case DType::kFloat32:
      return vector_ok ? launch_for_group<float, 4, kMode>(a, stream) : launch_for_group<float, 1, kMode>(a, stream);
    case DType::kFloat16:
      return vector_ok ? launch_for_group<__half, 8, kMode>(a, stream) : launch_for_group<__half, 1, kMode>(a, stream);
    case DType::kBFloat16:
      return vector_ok ? launch_for_group<__nv_bfloat16, 8, kMode>(a, stream)
                       : launch_for_group<__nv_bfloat16, 1, kMode>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t cross_entropy_fwd_cuda(const CrossEntropyArgs& args, DType dtype, cudaStream_t stream) {
  return launch<0>(args, dtype, stream);
}
cudaError_t cross_entropy_bwd_cuda(const CrossEntropyArgs& args, DType dtype, cudaStream_t stream) {
  return launch<1>(args, dtype, stream);
}
cudaError_t cross_entropy_fwd_bwd_cuda(const CrossEntropyArgs& args, DType dtype, cudaStream_t stream) {
  return launch<2>(args, dtype, stream);
}

}  // namespace bertfast
