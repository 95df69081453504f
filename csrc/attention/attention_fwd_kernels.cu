// CUDA forward of attention (fp16 / bf16 on tensor cores, fp32 accumulation). Torch-free.
//
// Flash-attention-2 structure, written with mma.sync.m16n8k16 through inline PTX (helpers and
// the fragment layout in attention_mma.cuh): a block of 4 warps takes 64 queries of one
// (sequence, head); each warp owns 16 query rows. K and V tiles of 64 keys stream through
// shared memory (V stored transposed so that every MMA operand is read with 32-bit loads);
// online softmax in registers; the row log-sum-exp is saved.
#include "attention_mma.cuh"

namespace bertfast {
namespace attention_cuda {
namespace {

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
    __syncthreads();  // the previous tile's K, V and key bias are no longer read
    // A tile with no attendable key would leave m, l and O unchanged: skip it.
    if (!load_key_bias(sKeyBias, p, b, k0, sr.k_len)) continue;
    load_tile<T, Dp, kTile, false>(sK, S, a.k, b, sr.k_token0, h, k0, sr.k_len - k0, D);
    load_tile<T, Dp, kTile, true>(sVt, TS, a.v, b, sr.k_token0, h, k0, sr.k_len - k0, D);
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

template <typename T, int Dp>
constexpr size_t fwd_smem() {
  return (2 * kTile * Smem<Dp>::kStride + Dp * Smem<Dp>::kTStride) * sizeof(T) + kTile * sizeof(float);
}

template <typename T, int Dp>
cudaError_t fwd_dim(const AttentionFwdArgs& a, cudaStream_t stream) {
  return launch(attention_fwd_kernel<T, Dp>, grid_of(a.p, a.p.seq_q), fwd_smem<T, Dp>(), stream, a);
}

template <typename T>
cudaError_t fwd_typed(const AttentionFwdArgs& a, cudaStream_t stream) {
  if (a.p.head_dim <= 32) return fwd_dim<T, 32>(a, stream);
  if (a.p.head_dim <= 64) return fwd_dim<T, 64>(a, stream);
  return fwd_dim<T, 128>(a, stream);
}

}  // namespace
}  // namespace attention_cuda

cudaError_t attention_fwd_cuda(const AttentionFwdArgs& a, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat16: return attention_cuda::fwd_typed<__half>(a, stream);
    case DType::kBFloat16: return attention_cuda::fwd_typed<__nv_bfloat16>(a, stream);
    default: return cudaErrorInvalidValue;  // float32 is refused by the glue
  }
}

}  // namespace bertfast
