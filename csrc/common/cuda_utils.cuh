// Device helpers shared by torch-free CUDA kernel files.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace bertfast {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// N consecutive elements as float, in loads of at most 16 bytes (128-bit when aligned).
template <typename T, int N>
__device__ __forceinline__ void load_floats(const T* p, float* out) {
  constexpr int kChunk = (N * sizeof(T) > 16) ? 16 / static_cast<int>(sizeof(T)) : N;
#pragma unroll
  for (int c = 0; c < N; c += kChunk) {
    const Pack<T, kChunk> pk = *reinterpret_cast<const Pack<T, kChunk>*>(p + c);
#pragma unroll
    for (int i = 0; i < kChunk; ++i) out[c + i] = to_float(pk.v[i]);
  }
}

template <typename T, int N>
__device__ __forceinline__ void store_floats(T* p, const float* in) {
  constexpr int kChunk = (N * sizeof(T) > 16) ? 16 / static_cast<int>(sizeof(T)) : N;
#pragma unroll
  for (int c = 0; c < N; c += kChunk) {
    Pack<T, kChunk> pk;
#pragma unroll
    for (int i = 0; i < kChunk; ++i) pk.v[i] = from_float<T>(in[c + i]);
    *reinterpret_cast<Pack<T, kChunk>*>(p + c) = pk;
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

inline int sm_count(int device) {
  static int cached[64] = {0};
  if (device < 0 || device >= 64) device = 0;
  if (cached[device] == 0) {
    int n = 0;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0) n = 108;
    cached[device] = n;
  }
  return cached[device];
}

// Call f(T{}) with the CUDA element type of `d`.
template <typename F>
void dispatch_cuda_dtype(DType d, F&& f) {
  switch (d) {
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat16: f(__half{}); break;
    case DType::kBFloat16: f(__nv_bfloat16{}); break;
  }
}

}  // namespace bertfast
