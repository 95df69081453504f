// CUDA backward of attention (fp16 / bf16 on tensor cores, fp32 accumulation). Torch-free.
//
// Three kernels, no atomics (so the backward is deterministic in every mode):
//   dvec:  Dvec = rowsum(dO * O) per (head, query row);
//   dk/dv: a block per 64 keys, warps own 16 keys, loop over query tiles recomputing
//          S^T = K Q^T and P^T = exp(S^T - lse), dV += Z^T dO, dK += dS^T Q;
//   dq:    a block per 64 queries, warps own 16 queries, loop over key tiles recomputing
//          S and P, dQ += dS K; also writes the bias gradient dS when asked.
// Recomputing S and dP in the dq kernel costs two extra tile products over a single kernel
// with fp32 atomics, and buys bitwise-reproducible gradients and no accumulator.
#include "attention_mma.cuh"

namespace bertfast {
namespace attention_cuda {
namespace {

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

  // A tile of keys that no query may attend gets zero gradients: the glue zero-fills them.
  if (!load_key_bias(sKeyBias, p, b, k0, sr.k_len)) return;
  load_tile<T, Dp, kTile, false>(sK, S, a.k, b, sr.k_token0, h, k0, sr.k_len - k0, D);
  load_tile<T, Dp, kTile, false>(sV, S, a.v, b, sr.k_token0, h, k0, sr.k_len - k0, D);

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
    // A tile with no attendable key has P = 0: it adds nothing to dQ (nor to the bias gradient).
    if (!load_key_bias(sKeyBias, p, b, k0, sr.k_len)) continue;
    load_tile<T, Dp, kTile, false>(sK, S, a.k, b, sr.k_token0, h, k0, sr.k_len - k0, D);
    load_tile<T, Dp, kTile, false>(sV, S, a.v, b, sr.k_token0, h, k0, sr.k_len - k0, D);
    load_tile<T, Dp, kTile, true>(sKt, TS, a.k, b, sr.k_token0, h, k0, sr.k_len - k0, D);
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

template <int Dp>
constexpr int bwd_query_tile() {
  return Dp > 64 ? 32 : 64;  // fewer registers for the dK, dV accumulators of wide heads
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
cudaError_t bwd_typed(const AttentionBwdArgs& a, float* dvec, cudaStream_t stream) {
  if (a.p.head_dim <= 32) return bwd_dim<T, 32>(a, dvec, stream);
  if (a.p.head_dim <= 64) return bwd_dim<T, 64>(a, dvec, stream);
  return bwd_dim<T, 128>(a, dvec, stream);
}

}  // namespace
}  // namespace attention_cuda

int64_t attention_bwd_cuda_workspace_bytes(const AttentionBwdArgs& a) {
  return a.p.heads * a.p.total_q * static_cast<int64_t>(sizeof(float));
}

cudaError_t attention_bwd_cuda(const AttentionBwdArgs& a, DType dtype, void* workspace, cudaStream_t stream) {
  float* dvec = static_cast<float*>(workspace);
  switch (dtype) {
    case DType::kFloat16: return attention_cuda::bwd_typed<__half>(a, dvec, stream);
    case DType::kBFloat16: return attention_cuda::bwd_typed<__nv_bfloat16>(a, dvec, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace bertfast
