// A small float32 GEMM for the tiles of the CPU attention kernels, compiled once per CPU
// capability. Every product the kernels need (S = K Q^T, O += P V and the four of the
// backward) is C (M x N) (+)= A (M x K) * B (K x N) with B row-major, N a multiple of the
// vector width, and A read through two strides, so that a transposed A costs nothing.
// The register tile is kRows rows x two vectors: each step broadcasts kRows elements of A
// against two vectors of B (the classic 6 x 16 AVX2 kernel).
#pragma once
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

namespace bertfast {
namespace CPU_CAPABILITY {

using fVec = at::vec::Vectorized<float>;
constexpr int64_t kVecLen = fVec::size();

// C[m][n] (+)= sum_k A[m*a_rs + k*a_cs] * B[k*ldb + n] for m < MR, n < NV * kVecLen.
template <int MR, int NV>
inline void gemm_block(int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* B, int64_t ldb, float* C,
                       int64_t ldc, bool accumulate) {
  fVec acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NV; ++n)
      acc[m][n] = accumulate ? fVec::loadu(C + m * ldc + n * kVecLen) : fVec(0.0f);
  for (int64_t k = 0; k < K; ++k) {
    fVec b[NV];
    for (int n = 0; n < NV; ++n) b[n] = fVec::loadu(B + k * ldb + n * kVecLen);
    const float* a = A + k * a_cs;
    for (int m = 0; m < MR; ++m) {
      const fVec am(a[m * a_rs]);
      for (int n = 0; n < NV; ++n) acc[m][n] = at::vec::fmadd(am, b[n], acc[m][n]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NV; ++n) acc[m][n].store(C + m * ldc + n * kVecLen);
}

template <int NV>
inline void gemm_column_panel(int64_t M, int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* B,
                              int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  constexpr int kRows = 6;
  int64_t m = 0;
  for (; m + kRows <= M; m += kRows)
    gemm_block<kRows, NV>(K, A + m * a_rs, a_rs, a_cs, B, ldb, C + m * ldc, ldc, accumulate);
  const float* Am = A + m * a_rs;
  float* Cm = C + m * ldc;
  switch (M - m) {
    case 5: gemm_block<5, NV>(K, Am, a_rs, a_cs, B, ldb, Cm, ldc, accumulate); break;
    case 4: gemm_block<4, NV>(K, Am, a_rs, a_cs, B, ldb, Cm, ldc, accumulate); break;
    case 3: gemm_block<3, NV>(K, Am, a_rs, a_cs, B, ldb, Cm, ldc, accumulate); break;
    case 2: gemm_block<2, NV>(K, Am, a_rs, a_cs, B, ldb, Cm, ldc, accumulate); break;
    case 1: gemm_block<1, NV>(K, Am, a_rs, a_cs, B, ldb, Cm, ldc, accumulate); break;
    default: break;
  }
}

// C (M x N) (+)= A (M x K) * B (K x N); N must be a multiple of kVecLen. A(m, k) is
// A[m*a_rs + k*a_cs]. With accumulate false, C is overwritten (zeros when K == 0).
inline void small_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* B,
                       int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  int64_t n = 0;
  for (; n + 2 * kVecLen <= N; n += 2 * kVecLen)
    gemm_column_panel<2>(M, K, A, a_rs, a_cs, B + n, ldb, C + n, ldc, accumulate);
  if (n < N) gemm_column_panel<1>(M, K, A, a_rs, a_cs, B + n, ldb, C + n, ldc, accumulate);
}

}  // namespace CPU_CAPABILITY
}  // namespace bertfast
