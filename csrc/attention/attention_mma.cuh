// Device helpers shared by the attention CUDA kernels (attention_fwd_kernels.cu,
// attention_bwd_kernels.cu). Torch-free. Included only by .cu files.
//
// MMA fragment layout (PTX ISA, m16n8k16, 16-bit inputs); lane = 4*g + t:
//   A (16x16, row): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B (16x8, col):  b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//   C (16x8, f32):  c0,c1 = C[g][2t..2t+1], c2,c3 = C[g+8][2t..2t+1]
// A C-fragment pair (n-tiles 2kk, 2kk+1) of P is exactly the A fragment of P for k-step kk.
// Every operand therefore comes from shared memory laid out with the reduction (k) index
// contiguous: A row-major [m][k], B as [n][k]. Rows are padded by 8 elements, which makes
// the 32-bit fragment loads of a warp fall into 32 distinct banks.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../common/philox.h"
#include "attention.h"

namespace bertfast {
namespace attention_cuda {

constexpr int kThreads = 128;  // 4 warps
constexpr int kTile = 64;      // queries per block (forward, dq) and keys per block (dk/dv)
constexpr float kPosInf = __builtin_huge_valf();
constexpr float kNegInf = -__builtin_huge_valf();

template <typename T>
struct MmaType;
template <>
struct MmaType<__half> {
  __device__ static uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  __device__ static float to_float(__half v) { return __half2float(v); }
};
template <>
struct MmaType<__nv_bfloat16> {
  __device__ static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  __device__ static float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
};

// c += a * b on tensor cores.
template <typename T>
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(BERTFAST_CUDA_EMU)  // the CPU emulation of tests/cuda_emu (no inline PTX on the host)
  bertfast_emu::mma_16816<T>(c, a, b);
#else
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#endif
}

template <typename T>
__device__ __forceinline__ uint32_t ld32(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

// A fragment of rows m0 .. m0+15, k columns k0 .. k0+15 of a row-major [m][k] tile.
template <typename T>
__device__ __forceinline__ void load_a(uint32_t a[4], const T* tile, int stride, int m0, int k0, int g, int t) {
  a[0] = ld32(tile + (m0 + g) * stride + k0 + 2 * t);
  a[1] = ld32(tile + (m0 + g + 8) * stride + k0 + 2 * t);
  a[2] = ld32(tile + (m0 + g) * stride + k0 + 2 * t + 8);
  a[3] = ld32(tile + (m0 + g + 8) * stride + k0 + 2 * t + 8);
}

// B fragment of n columns n0 .. n0+7, k rows k0 .. k0+15 of a tile stored [n][k].
template <typename T>
__device__ __forceinline__ void load_b(uint32_t b[2], const T* tile, int stride, int n0, int k0, int g, int t) {
  b[0] = ld32(tile + (n0 + g) * stride + k0 + 2 * t);
  b[1] = ld32(tile + (n0 + g) * stride + k0 + 2 * t + 8);
}

// The A fragment (k-step kk) of a 16 x (8*N) matrix held as C fragments c[N][4].
template <typename T>
__device__ __forceinline__ void c_to_a(uint32_t a[4], const float (*c)[4], int kk) {
  a[0] = MmaType<T>::pack(c[2 * kk][0], c[2 * kk][1]);
  a[1] = MmaType<T>::pack(c[2 * kk][2], c[2 * kk][3]);
  a[2] = MmaType<T>::pack(c[2 * kk + 1][0], c[2 * kk + 1][1]);
  a[3] = MmaType<T>::pack(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Where sequence b sits. Varlen offsets are clamped to [0, total] and lengths to max_seqlen,
// so that cu_seqlens values the host did not check can never read out of bounds.
struct SeqRange {
  int64_t q_token0, k_token0, lse_row0;
  int q_len, k_len;
};

__device__ __forceinline__ SeqRange seq_range(const AttentionProblem& p, int b) {
  SeqRange s;
  if (p.cu_seqlens) {
    const int64_t total = p.total_q;
    int64_t start = p.cu_seqlens[b], end = p.cu_seqlens[b + 1];
    start = start < 0 ? 0 : (start > total ? total : start);
    end = end < start ? start : (end > total ? total : end);
    const int64_t len = end - start < p.seq_q ? end - start : p.seq_q;
    s.q_token0 = s.k_token0 = s.lse_row0 = start;
    s.q_len = s.k_len = static_cast<int>(len);
  } else {
    s.q_token0 = s.k_token0 = 0;
    s.lse_row0 = static_cast<int64_t>(b) * p.seq_q;
    s.q_len = static_cast<int>(p.seq_q);
    s.k_len = static_cast<int>(p.seq_k);
  }
  return s;
}

template <typename T>
__device__ __forceinline__ const T* token_ptr(const AttentionTensor& x, int b, int64_t token, int h) {
  return static_cast<const T*>(x.data) + b * x.batch_stride + token * x.token_stride + h * x.head_stride;
}

// rows x Dp elements of rows row0.. of (b, token0, h) into shared memory, zero beyond
// `valid` rows and beyond head_dim. Row-major [row][d] (stride) or transposed [d][row] (tstride).
template <typename T, int Dp, int Rows, bool kTransposed>
__device__ __forceinline__ void load_tile(T* dst, int stride, const AttentionTensor& x, int b, int64_t token0, int h,
                                          int row0, int valid, int head_dim) {
  const T* base = token_ptr<T>(x, b, token0 + row0, h);
  constexpr int kChunks = Dp / 8;
  for (int idx = threadIdx.x; idx < Rows * kChunks; idx += kThreads) {
    const int r = idx / kChunks, c = (idx % kChunks) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < valid && c < head_dim) v = *reinterpret_cast<const uint4*>(base + r * x.token_stride + c);
    if constexpr (kTransposed) {
      // Split the 16 bytes into 16-bit elements with shifts (taking &v would spill it to the stack).
      uint16_t* out = reinterpret_cast<uint16_t*>(dst);
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int k = 0; k < 8; ++k) out[(c + k) * stride + r] = static_cast<uint16_t>(w[k / 2] >> (16 * (k % 2)));
    } else {
      *reinterpret_cast<uint4*>(dst + r * stride + c) = v;
    }
  }
}

// 0 for a key that may be attended, -inf for one beyond the sequence or masked out. Also a
// barrier; returns whether any key of the tile may be attended (the same in every thread), so
// that a block can skip a tile that the padding mask removes entirely.
__device__ __forceinline__ bool load_key_bias(float* dst, const AttentionProblem& p, int b, int key0, int k_len) {
  static_assert(kThreads >= kTile, "one key per thread");
  bool any = false;
  if (threadIdx.x < kTile) {
    const int j = key0 + static_cast<int>(threadIdx.x);
    any = j < k_len && (p.key_mask == nullptr || p.key_mask[static_cast<int64_t>(b) * p.seq_k + j]);
    dst[threadIdx.x] = any ? 0.0f : kNegInf;
  }
  return __syncthreads_or(any) != 0;
}

__device__ __forceinline__ float bias_at(const AttentionProblem& p, int b, int h, int i, int j) {
  const int64_t idx = b * p.bias_stride_b + h * p.bias_stride_h + i * p.bias_stride_q + j * p.bias_stride_k;
  switch (p.bias_dtype) {
    case DType::kFloat16: return __half2float(static_cast<const __half*>(p.bias)[idx]);
    case DType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p.bias)[idx]);
    default: return static_cast<const float*>(p.bias)[idx];
  }
}

// scale * raw + key bias + attn_bias of score (i, j) (positions in the sequence).
__device__ __forceinline__ float score(const AttentionProblem& p, float raw, float key_bias, int b, int h, int i,
                                       int j, int q_len) {
  float s = raw * p.scale + key_bias;
  if (p.bias != nullptr && i < q_len && key_bias == 0.0f) s += bias_at(p, b, h, i, j);
  return s;
}

// Dropout multiplier (0 or 1/(1-p)) of probability (b, h, i, j); see attention.h.
__device__ __forceinline__ float dropout_mul(const AttentionProblem& p, uint64_t seed, int b, int h, int i, int j) {
  const uint64_t counter =
      static_cast<uint64_t>(((static_cast<int64_t>(b) * p.heads + h) * p.counter_q + i) * p.counter_k + j);
  // philox.h's dropout_keep indexes the four words with counter & 3, which puts them on the
  // stack; a select chain keeps them in registers.
  const Philox4 r = philox4x32_10(counter >> 2, seed);
  const uint32_t k = static_cast<uint32_t>(counter & 3);
  const uint32_t word = k == 0 ? r.v[0] : (k == 1 ? r.v[1] : (k == 2 ? r.v[2] : r.v[3]));
  return word >= p.threshold ? p.dropout_scale : 0.0f;
}

template <int Dp>
struct Smem {
  static constexpr int kStride = Dp + 8;       // row-major [row][d] tiles
  static constexpr int kTStride = kTile + 8;   // transposed [d][64 rows] tiles
};

// Launch with `smem` bytes of dynamic shared memory (above 48 KiB needs the opt-in).
template <typename Kernel>
cudaError_t launch(Kernel kernel, dim3 grid, size_t smem, cudaStream_t stream, const auto&... args) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  kernel<<<grid, kThreads, smem, stream>>>(args...);
  return cudaGetLastError();
}

// Blocks of kTile rows per (sequence, head): x = row tile, y = head, z = sequence.
inline dim3 grid_of(const AttentionProblem& p, int64_t rows) {
  return dim3(static_cast<unsigned>((rows + kTile - 1) / kTile), static_cast<unsigned>(p.heads),
              static_cast<unsigned>(p.batch));
}

}  // namespace attention_cuda
}  // namespace bertfast
