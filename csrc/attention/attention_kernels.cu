// CUDA kernels of attention (fp16 / bf16 on tensor cores, fp32 accumulation). Torch-free.
//
// Flash-attention-2 structure, written with mma.sync.m16n8k16 through inline PTX:
//  - forward: a block of 4 warps takes 64 queries of one (sequence, head); each warp owns 16
//    query rows. K and V tiles of 64 keys stream through shared memory (V stored transposed so
//    that every MMA operand is read with 32-bit loads); online softmax in registers; the row
//    log-sum-exp is saved.
//  - backward, three kernels, no atomics (so it is deterministic in every mode):
//      dvec:  Dvec = rowsum(dO * O) per (head, query row);
//      dk/dv: a block per 64 keys, warps own 16 keys, loop over query tiles recomputing
//             S^T = K Q^T and P^T = exp(S^T - lse), dV += Z^T dO, dK += dS^T Q;
//      dq:    a block per 64 queries, warps own 16 queries, loop over key tiles recomputing
//             S and P, dQ += dS K; also writes the bias gradient dS when asked.
//    Recomputing S and dP in the dq kernel costs two extra tile products over a single
//    kernel with fp32 atomics, and buys bitwise-reproducible gradients and no accumulator.
//
// MMA fragment layout (PTX ISA, m16n8k16, 16-bit inputs); lane = 4*g + t:
//   A (16x16, row): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B (16x8, col):  b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//   C (16x8, f32):  c0,c1 = C[g][2t..2t+1], c2,c3 = C[g+8][2t..2t+1]
// A C-fragment pair (n-tiles 2kk, 2kk+1) of P is exactly the A fragment of P for k-step kk.
// Every operand therefore comes from shared memory laid out with the reduction (k) index
// contiguous: A row-major [m][k], B as [n][k]. Rows are padded by 8 elements, which makes
// the 32-bit fragment loads of a warp fall into 32 distinct banks.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../common/philox.h"
#include "attention.h"

namespace bertfast {
namespace {

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

// 0 for a key that may be attended, -inf for one beyond the sequence or masked out.
__device__ __forceinline__ void load_key_bias(float* dst, const AttentionProblem& p, int b, int key0, int k_len) {
  for (int r = threadIdx.x; r < kTile; r += kThreads) {
    const int j = key0 + r;
    const bool ok = j < k_len && (p.key_mask == nullptr || p.key_mask[static_cast<int64_t>(b) * p.seq_k + j]);
    dst[r] = ok ? 0.0f : kNegInf;
  }
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

// ---------------------------------------------------------------------------------------
// Forward

template <typename T, int Dp>
__global__ void __launch_bounds__(kThreads, 1) attention_fwd_kernel(const AttentionFwdArgs a) {
  constexpr int S = Smem<Dp>::kStride, TS = Smem<Dp>::kTStride;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + kTile * S;
  T* sVt = sK + kTile * S;
  float* sKeyBias = reinterpret_cast<float*>(sVt + Dp * TS);

  const AttentionProblem& p = a.p;
  const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * kTile;
  const SeqRange sr = seq_range(p, b);
  if (q0 >= sr.q_len) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int D = static_cast<int>(p.head_dim);
  const uint64_t seed = p.seed ? static_cast<uint64_t>(*p.seed) : 0;

  load_tile<T, Dp, kTile, false>(sQ, S, a.q, b, sr.q_token0, h, q0, sr.q_len - q0, D);

  float o[Dp / 8][4];
#pragma unroll
  for (int n = 0; n < Dp / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m[2] = {kNegInf, kNegInf}, l[2] = {0.0f, 0.0f};
  const int row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};

  for (int k0 = 0; k0 < sr.k_len; k0 += kTile) {
    __syncthreads();  // the previous tile's K and V are no longer read
    load_tile<T, Dp, kTile, false>(sK, S, a.k, b, sr.k_token0, h, k0, sr.k_len - k0, D);
    load_tile<T, Dp, kTile, true>(sVt, TS, a.v, b, sr.k_token0, h, k0, sr.k_len - k0, D);
    load_key_bias(sKeyBias, p, b, k0, sr.k_len);
    __syncthreads();

    float s[kTile / 8][4];
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < Dp / 16; ++kk) {
      uint32_t af[4];
      load_a(af, sQ, S, warp * 16, kk * 16, g, t);
#pragma unroll
      for (int n = 0; n < kTile / 8; ++n) {
        uint32_t bf[2];
        load_b(bf, sK, S, n * 8, kk * 16, g, t);
        mma_16816<T>(s[n], af, bf);
      }
    }
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int kc = n * 8 + 2 * t + (e & 1);
        s[n][e] = score(p, s[n][e], sKeyBias[kc], b, h, row[e / 2], k0 + kc, sr.q_len);
      }
    // Online softmax; rows with nothing attendable yet keep m = -inf and shift by 0.
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      float mx = m[rr];
#pragma unroll
      for (int n = 0; n < kTile / 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * rr], s[n][2 * rr + 1]));
      mx = quad_max(mx);
      const float shift = mx == kNegInf ? 0.0f : mx;
      const float alpha = __expf(m[rr] - shift);
      float sum = 0.0f;
#pragma unroll
      for (int n = 0; n < kTile / 8; ++n) {
        s[n][2 * rr] = __expf(s[n][2 * rr] - shift);
        s[n][2 * rr + 1] = __expf(s[n][2 * rr + 1] - shift);
        sum += s[n][2 * rr] + s[n][2 * rr + 1];
      }
      l[rr] = l[rr] * alpha + sum;  // a partial sum per thread; the quad adds them at the end
      m[rr] = mx;
#pragma unroll
      for (int n = 0; n < Dp / 8; ++n) {
        o[n][2 * rr] *= alpha;
        o[n][2 * rr + 1] *= alpha;
      }
    }
    if (p.seed != nullptr) {
#pragma unroll
      for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] *= dropout_mul(p, seed, b, h, row[e / 2], k0 + n * 8 + 2 * t + (e & 1));
    }
    // O += P V
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      uint32_t af[4];
      c_to_a<T>(af, s, kk);
#pragma unroll
      for (int n = 0; n < Dp / 8; ++n) {
        uint32_t bf[2];
        load_b(bf, sVt, TS, n * 8, kk * 16, g, t);
        mma_16816<T>(o[n], af, bf);
      }
    }
  }

#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const float sum = quad_sum(l[rr]);
    const int i = row[rr];
    if (i >= sr.q_len) continue;
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    T* out = const_cast<T*>(token_ptr<T>(a.out, b, sr.q_token0 + i, h));
#pragma unroll
    for (int n = 0; n < Dp / 8; ++n) {
      const int d = n * 8 + 2 * t;
      if (d < D) *reinterpret_cast<uint32_t*>(out + d) = MmaType<T>::pack(o[n][2 * rr] * inv, o[n][2 * rr + 1] * inv);
    }
    if (t == 0) a.lse[h * p.total_q + sr.lse_row0 + i] = sum > 0.0f ? m[rr] + __logf(sum) : kPosInf;
  }
}

// ---------------------------------------------------------------------------------------
// Backward

// dvec[h, row] = sum_d dO * O: one warp per (row, head).
template <typename T>
__global__ void __launch_bounds__(kThreads) attention_bwd_dvec_kernel(const AttentionBwdArgs a, float* dvec) {
  const AttentionProblem& p = a.p;
  const int64_t warp_id = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp_id >= p.total_q * p.heads) return;
  const int h = static_cast<int>(warp_id % p.heads);
  const int64_t r = warp_id / p.heads;
  const int b = p.cu_seqlens ? 0 : static_cast<int>(r / p.seq_q);
  const int64_t token = p.cu_seqlens ? r : r % p.seq_q;
  const T* o = token_ptr<T>(a.out, b, token, h);
  const T* g = token_ptr<T>(a.grad_out, b, token, h);
  float acc = 0.0f;
  for (int d = lane; d < p.head_dim; d += 32) acc += MmaType<T>::to_float(o[d]) * MmaType<T>::to_float(g[d]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) dvec[h * p.total_q + r] = acc;
}

// dK and dV of 64 keys; QT queries per inner step.
template <typename T, int Dp, int QT>
__global__ void __launch_bounds__(kThreads, 1) attention_bwd_dkdv_kernel(const AttentionBwdArgs a, const float* dvec) {
  constexpr int S = Smem<Dp>::kStride, QTS = QT + 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + kTile * S;
  T* sQ = sV + kTile * S;
  T* sdO = sQ + QT * S;
  T* sQt = sdO + QT * S;
  T* sdOt = sQt + Dp * QTS;
  float* sKeyBias = reinterpret_cast<float*>(sdOt + Dp * QTS);
  float* sLse = sKeyBias + kTile;
  float* sDvec = sLse + QT;

  const AttentionProblem& p = a.p;
  const int b = blockIdx.z, h = blockIdx.y, k0 = blockIdx.x * kTile;
  const SeqRange sr = seq_range(p, b);
  if (k0 >= sr.k_len) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int D = static_cast<int>(p.head_dim);
  const uint64_t seed = p.seed ? static_cast<uint64_t>(*p.seed) : 0;

  load_tile<T, Dp, kTile, false>(sK, S, a.k, b, sr.k_token0, h, k0, sr.k_len - k0, D);
  load_tile<T, Dp, kTile, false>(sV, S, a.v, b, sr.k_token0, h, k0, sr.k_len - k0, D);
  load_key_bias(sKeyBias, p, b, k0, sr.k_len);

  float dk[Dp / 8][4], dv[Dp / 8][4];
#pragma unroll
  for (int n = 0; n < Dp / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.0f;
  const int key_local[2] = {warp * 16 + g, warp * 16 + g + 8};

  for (int q0 = 0; q0 < sr.q_len; q0 += QT) {
    __syncthreads();
    load_tile<T, Dp, QT, false>(sQ, S, a.q, b, sr.q_token0, h, q0, sr.q_len - q0, D);
    load_tile<T, Dp, QT, false>(sdO, S, a.grad_out, b, sr.q_token0, h, q0, sr.q_len - q0, D);
    load_tile<T, Dp, QT, true>(sQt, QTS, a.q, b, sr.q_token0, h, q0, sr.q_len - q0, D);
    load_tile<T, Dp, QT, true>(sdOt, QTS, a.grad_out, b, sr.q_token0, h, q0, sr.q_len - q0, D);
    for (int c = threadIdx.x; c < QT; c += kThreads) {
      const bool ok = q0 + c < sr.q_len;
      sLse[c] = ok ? a.lse[h * p.total_q + sr.lse_row0 + q0 + c] : kPosInf;
      sDvec[c] = ok ? dvec[h * p.total_q + sr.lse_row0 + q0 + c] : 0.0f;
    }
    __syncthreads();

    // S^T = K Q^T and dP~^T = V dO^T for this warp's 16 keys.
    float st[QT / 8][4], dpt[QT / 8][4];
#pragma unroll
    for (int n = 0; n < QT / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[n][e] = dpt[n][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < Dp / 16; ++kk) {
      uint32_t ak[4], av[4];
      load_a(ak, sK, S, warp * 16, kk * 16, g, t);
      load_a(av, sV, S, warp * 16, kk * 16, g, t);
#pragma unroll
      for (int n = 0; n < QT / 8; ++n) {
        uint32_t bq[2], bo[2];
        load_b(bq, sQ, S, n * 8, kk * 16, g, t);
        load_b(bo, sdO, S, n * 8, kk * 16, g, t);
        mma_16816<T>(st[n], ak, bq);
        mma_16816<T>(dpt[n], av, bo);
      }
    }
    // P^T, Z^T = dropped P^T (into dpt after use), dS^T = P^T (dP - Dvec) (into st).
#pragma unroll
    for (int n = 0; n < QT / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = key_local[e / 2], c = n * 8 + 2 * t + (e & 1);
        const int i = q0 + c, j = k0 + r;
        const float s = score(p, st[n][e], sKeyBias[r], b, h, i, j, sr.q_len);
        const float pr = __expf(s - sLse[c]);
        const float mul = p.seed != nullptr ? dropout_mul(p, seed, b, h, i, j) : 1.0f;
        const float dpv = dpt[n][e] * mul;
        st[n][e] = pr * (dpv - sDvec[c]);
        dpt[n][e] = pr * mul;
      }
    // dV += Z^T dO ; dK += dS^T Q   (B operands stored [d][query])
#pragma unroll
    for (int kk = 0; kk < QT / 16; ++kk) {
      uint32_t az[4], as[4];
      c_to_a<T>(az, dpt, kk);
      c_to_a<T>(as, st, kk);
#pragma unroll
      for (int n = 0; n < Dp / 8; ++n) {
        uint32_t bo[2], bq[2];
        load_b(bo, sdOt, QTS, n * 8, kk * 16, g, t);
        load_b(bq, sQt, QTS, n * 8, kk * 16, g, t);
        mma_16816<T>(dv[n], az, bo);
        mma_16816<T>(dk[n], as, bq);
      }
    }
  }

#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const int j = k0 + key_local[rr];
    if (j >= sr.k_len) continue;
    T* gk = const_cast<T*>(token_ptr<T>(a.grad_k, b, sr.k_token0 + j, h));
    T* gv = const_cast<T*>(token_ptr<T>(a.grad_v, b, sr.k_token0 + j, h));
#pragma unroll
    for (int n = 0; n < Dp / 8; ++n) {
      const int d = n * 8 + 2 * t;
      if (d >= D) continue;
      *reinterpret_cast<uint32_t*>(gk + d) = MmaType<T>::pack(dk[n][2 * rr] * p.scale, dk[n][2 * rr + 1] * p.scale);
      *reinterpret_cast<uint32_t*>(gv + d) = MmaType<T>::pack(dv[n][2 * rr], dv[n][2 * rr + 1]);
    }
  }
}

// dQ of 64 queries (and the bias gradient of their rows).
template <typename T, int Dp>
__global__ void __launch_bounds__(kThreads, 1) attention_bwd_dq_kernel(const AttentionBwdArgs a, const float* dvec) {
  constexpr int S = Smem<Dp>::kStride, TS = Smem<Dp>::kTStride;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sdO = sQ + kTile * S;
  T* sK = sdO + kTile * S;
  T* sV = sK + kTile * S;
  T* sKt = sV + kTile * S;
  float* sKeyBias = reinterpret_cast<float*>(sKt + Dp * TS);

  const AttentionProblem& p = a.p;
  const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * kTile;
  const SeqRange sr = seq_range(p, b);
  if (q0 >= sr.q_len) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int D = static_cast<int>(p.head_dim);
  const uint64_t seed = p.seed ? static_cast<uint64_t>(*p.seed) : 0;

  load_tile<T, Dp, kTile, false>(sQ, S, a.q, b, sr.q_token0, h, q0, sr.q_len - q0, D);
  load_tile<T, Dp, kTile, false>(sdO, S, a.grad_out, b, sr.q_token0, h, q0, sr.q_len - q0, D);
  const int row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
  float lse[2], dv_row[2];
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const bool ok = row[rr] < sr.q_len;
    lse[rr] = ok ? a.lse[h * p.total_q + sr.lse_row0 + row[rr]] : kPosInf;
    dv_row[rr] = ok ? dvec[h * p.total_q + sr.lse_row0 + row[rr]] : 0.0f;
  }
  float dq[Dp / 8][4];
#pragma unroll
  for (int n = 0; n < Dp / 8; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;

  for (int k0 = 0; k0 < sr.k_len; k0 += kTile) {
    __syncthreads();
    load_tile<T, Dp, kTile, false>(sK, S, a.k, b, sr.k_token0, h, k0, sr.k_len - k0, D);
    load_tile<T, Dp, kTile, false>(sV, S, a.v, b, sr.k_token0, h, k0, sr.k_len - k0, D);
    load_tile<T, Dp, kTile, true>(sKt, TS, a.k, b, sr.k_token0, h, k0, sr.k_len - k0, D);
    load_key_bias(sKeyBias, p, b, k0, sr.k_len);
    __syncthreads();

    float s[kTile / 8][4], dp[kTile / 8][4];
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < Dp / 16; ++kk) {
      uint32_t aq[4], ao[4];
      load_a(aq, sQ, S, warp * 16, kk * 16, g, t);
      load_a(ao, sdO, S, warp * 16, kk * 16, g, t);
#pragma unroll
      for (int n = 0; n < kTile / 8; ++n) {
        uint32_t bk[2], bv[2];
        load_b(bk, sK, S, n * 8, kk * 16, g, t);
        load_b(bv, sV, S, n * 8, kk * 16, g, t);
        mma_16816<T>(s[n], aq, bk);
        mma_16816<T>(dp[n], ao, bv);
      }
    }
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int kc = n * 8 + 2 * t + (e & 1);
        const int i = row[e / 2], j = k0 + kc;
        const float sc = score(p, s[n][e], sKeyBias[kc], b, h, i, j, sr.q_len);
        const float pr = __expf(sc - lse[e / 2]);
        const float mul = p.seed != nullptr ? dropout_mul(p, seed, b, h, i, j) : 1.0f;
        const float ds = pr * (dp[n][e] * mul - dv_row[e / 2]);
        s[n][e] = ds;
        if (a.grad_bias != nullptr && i < sr.q_len && j < sr.k_len)
          a.grad_bias[((static_cast<int64_t>(b) * p.heads + h) * p.seq_q + i) * p.seq_k + j] = ds;
      }
    // dQ += dS K   (B operand stored [d][key])
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      uint32_t as[4];
      c_to_a<T>(as, s, kk);
#pragma unroll
      for (int n = 0; n < Dp / 8; ++n) {
        uint32_t bk[2];
        load_b(bk, sKt, TS, n * 8, kk * 16, g, t);
        mma_16816<T>(dq[n], as, bk);
      }
    }
  }

#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const int i = row[rr];
    if (i >= sr.q_len) continue;
    T* gq = const_cast<T*>(token_ptr<T>(a.grad_q, b, sr.q_token0 + i, h));
#pragma unroll
    for (int n = 0; n < Dp / 8; ++n) {
      const int d = n * 8 + 2 * t;
      if (d < D) *reinterpret_cast<uint32_t*>(gq + d) = MmaType<T>::pack(dq[n][2 * rr] * p.scale, dq[n][2 * rr + 1] * p.scale);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Launchers

template <int Dp>
constexpr int bwd_query_tile() {
  return Dp > 64 ? 32 : 64;  // fewer registers for the dK, dV accumulators of wide heads
}

template <typename T, int Dp>
constexpr size_t fwd_smem() {
  return (2 * kTile * Smem<Dp>::kStride + Dp * Smem<Dp>::kTStride) * sizeof(T) + kTile * sizeof(float);
}
template <typename T, int Dp>
constexpr size_t dkdv_smem() {
  constexpr int QT = bwd_query_tile<Dp>();
  return (2 * kTile * Smem<Dp>::kStride + 2 * QT * Smem<Dp>::kStride + 2 * Dp * (QT + 8)) * sizeof(T) +
         (kTile + 2 * QT) * sizeof(float);
}
template <typename T, int Dp>
constexpr size_t dq_smem() {
  return (4 * kTile * Smem<Dp>::kStride + Dp * Smem<Dp>::kTStride) * sizeof(T) + kTile * sizeof(float);
}

template <typename Kernel>
cudaError_t launch(Kernel kernel, dim3 grid, size_t smem, cudaStream_t stream, const auto&... args) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  kernel<<<grid, kThreads, smem, stream>>>(args...);
  return cudaGetLastError();
}

dim3 grid_of(const AttentionProblem& p, int64_t rows) {
  return dim3(static_cast<unsigned>((rows + kTile - 1) / kTile), static_cast<unsigned>(p.heads),
              static_cast<unsigned>(p.batch));
}

template <typename T, int Dp>
cudaError_t fwd_dim(const AttentionFwdArgs& a, cudaStream_t stream) {
  return launch(attention_fwd_kernel<T, Dp>, grid_of(a.p, a.p.seq_q), fwd_smem<T, Dp>(), stream, a);
}

template <typename T, int Dp>
cudaError_t bwd_dim(const AttentionBwdArgs& a, float* dvec, cudaStream_t stream) {
  const int64_t warps = a.p.total_q * a.p.heads;
  attention_bwd_dvec_kernel<T><<<static_cast<unsigned>((warps * 32 + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      a, dvec);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  err = launch(attention_bwd_dkdv_kernel<T, Dp, bwd_query_tile<Dp>()>, grid_of(a.p, a.p.seq_k), dkdv_smem<T, Dp>(),
               stream, a, static_cast<const float*>(dvec));
  if (err != cudaSuccess) return err;
  return launch(attention_bwd_dq_kernel<T, Dp>, grid_of(a.p, a.p.seq_q), dq_smem<T, Dp>(), stream, a,
                static_cast<const float*>(dvec));
}

template <typename T>
cudaError_t fwd_typed(const AttentionFwdArgs& a, cudaStream_t stream) {
  if (a.p.head_dim <= 32) return fwd_dim<T, 32>(a, stream);
  if (a.p.head_dim <= 64) return fwd_dim<T, 64>(a, stream);
  return fwd_dim<T, 128>(a, stream);
}

template <typename T>
cudaError_t bwd_typed(const AttentionBwdArgs& a, float* dvec, cudaStream_t stream) {
  if (a.p.head_dim <= 32) return bwd_dim<T, 32>(a, dvec, stream);
  if (a.p.head_dim <= 64) return bwd_dim<T, 64>(a, dvec, stream);
  return bwd_dim<T, 128>(a, dvec, stream);
}

}  // namespace

int64_t attention_bwd_cuda_workspace_bytes(const AttentionBwdArgs& a) {
  return a.p.heads * a.p.total_q * static_cast<int64_t>(sizeof(float));
}

cudaError_t attention_fwd_cuda(const AttentionFwdArgs& a, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat16: return fwd_typed<__half>(a, stream);
    case DType::kBFloat16: return fwd_typed<__nv_bfloat16>(a, stream);
    default: return cudaErrorInvalidValue;  // float32 is refused by the glue
  }
}

cudaError_t attention_bwd_cuda(const AttentionBwdArgs& a, DType dtype, void* workspace, cudaStream_t stream) {
  float* dvec = static_cast<float*>(workspace);
  switch (dtype) {
    case DType::kFloat16: return bwd_typed<__half>(a, dvec, stream);
    case DType::kBFloat16: return bwd_typed<__nv_bfloat16>(a, dvec, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace bertfast
