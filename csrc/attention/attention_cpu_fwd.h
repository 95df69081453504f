// CPU attention forward, compiled once per CPU capability.
//
// Forward: one task per (sequence, head, tile of kQueryTile queries), in parallel. The query
// tile is packed transposed and pre-scaled (Qt, dim x queries), so a key tile's scores come
// out transposed, S^T (keys x queries): the softmax statistics of a query are then reduced
// across rows, element-wise on vectors of queries, with no horizontal sums. Online softmax
// over key tiles keeps the running max m, sum l and an unnormalised output O (queries x dim);
// the (seq x seq) matrix never exists. The forward saves lse = m + log(l).
#pragma once
#include "attention_cpu_common.h"

namespace bertfast {
namespace CPU_CAPABILITY {

struct FwdScratch {
  std::vector<float> qt, s, o, k, v, m, l, alpha, row, mult;
  FwdScratch(int64_t D)
      : qt(D * kQueryTile), s(kKeyTile * kQueryTile), o(kQueryTile * D), k(kKeyTile * D), v(kKeyTile * D),
        m(kQueryTile), l(kQueryTile), alpha(kQueryTile), row(D), mult(kKeyTile) {}
};

// Online-softmax update of S^T (bk x bq_pad) in place into probabilities exp(S - m_new);
// updates m, l and writes alpha = exp(m_old - m_new) for rescaling O.
inline void online_softmax_tile(float* S, int64_t bk, int64_t bq_pad, float* m, float* l, float* alpha) {
  const fVec neg_inf(-kInf), zero(0.0f);
  for (int64_t iv = 0; iv < bq_pad; iv += kVecLen) {
    const fVec m_old = fVec::loadu(m + iv);
    fVec mx = m_old;
    for (int64_t r = 0; r < bk; ++r) mx = at::vec::maximum(mx, fVec::loadu(S + r * bq_pad + iv));
    // A row with nothing attendable yet keeps m = -inf; shift by 0 so exp gives 0, not NaN.
    const fVec shift = fVec::blendv(mx, zero, mx == neg_inf);
    const fVec a = (m_old - shift).exp_u20();
    fVec sum(0.0f);
    for (int64_t r = 0; r < bk; ++r) {
      const fVec e = (fVec::loadu(S + r * bq_pad + iv) - shift).exp_u20();
      e.store(S + r * bq_pad + iv);
      sum = sum + e;
    }
    (fVec::loadu(l + iv) * a + sum).store(l + iv);
    mx.store(m + iv);
    a.store(alpha + iv);
  }
}

template <typename T>
void fwd_query_tile(const AttentionFwdArgs& a, const SequenceView& seq, int64_t b, int64_t h, int64_t i0,
                    FwdScratch& w) {
  const AttentionProblem& p = a.p;
  const int64_t D = p.head_dim;
  const int64_t bq = std::min(kQueryTile, seq.q_len - i0), bq_pad = round_up_vec(bq);
  pack_transposed<T>(a.q, b, seq.q_token0 + i0, h, bq, bq_pad, D, p.scale, w.qt.data(), w.row.data());
  std::fill(w.m.begin(), w.m.end(), -kInf);
  std::fill(w.l.begin(), w.l.end(), 0.0f);
  std::fill(w.o.begin(), w.o.begin() + bq * D, 0.0f);
  float* S = w.s.data();
  for (int64_t r0 = 0; r0 < seq.n_keys; r0 += kKeyTile) {
    const int64_t bk = std::min(kKeyTile, seq.n_keys - r0);
    auto pos = [&](int64_t r) { return seq.key_at(r0 + r); };
    int64_t ldk, ldv;
    const float* K = gather_rows<T>(a.k, b, seq.k_token0, h, bk, D, pos, w.k.data(), ldk);
    const float* V = gather_rows<T>(a.v, b, seq.k_token0, h, bk, D, pos, w.v.data(), ldv);
    small_gemm(bk, bq_pad, D, K, ldk, 1, w.qt.data(), bq_pad, S, bq_pad, false);
    if (p.bias) {
      for (int64_t r = 0; r < bk; ++r)
        for (int64_t i = 0; i < bq; ++i) S[r * bq_pad + i] += bias_at(p, b, h, i0 + i, pos(r));
    }
    online_softmax_tile(S, bk, bq_pad, w.m.data(), w.l.data(), w.alpha.data());
    if (p.seed) {  // dropout after the softmax sums: l normalises the undropped probabilities
      float* mult = w.mult.data();
      for (int64_t i = 0; i < bq; ++i) {
        dropout_tile_row(p, b, h, i0 + i, bk, pos, mult);
        for (int64_t r = 0; r < bk; ++r) S[r * bq_pad + i] *= mult[r];
      }
    }
    for (int64_t i = 0; i < bq; ++i) {
      if (w.alpha[i] == 1.0f) continue;
      const fVec al(w.alpha[i]);
      float* o = w.o.data() + i * D;
      for (int64_t d = 0; d < D; d += kVecLen) (fVec::loadu(o + d) * al).store(o + d);
    }
    // O (bq x D) += P (bq x bk) V, with P(i, r) = S^T[r][i].
    small_gemm(bq, D, bk, S, 1, bq_pad, V, ldv, w.o.data(), D, true);
  }
  float* lse = a.lse + h * p.total_q + seq.lse_row0 + i0;
  for (int64_t i = 0; i < bq; ++i) {
    const float l = w.l[i];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    float* o = w.o.data() + i * D;
    for (int64_t d = 0; d < D; d += kVecLen) (fVec::loadu(o + d) * fVec(inv)).store(o + d);
    store_row_as(o, row_ptr_mut<T>(a.out, b, seq.q_token0 + i0 + i, h), D);
    lse[i] = l > 0.0f ? w.m[i] + std::log(l) : kInf;
  }
}

template <typename T>
void attention_fwd_impl(const AttentionFwdArgs& a) {
  const AttentionProblem& p = a.p;
  const Sequences seqs(p);
  // Tasks ordered (sequence, head, query tile) so that neighbours share K and V in cache.
  struct Task {
    int32_t b, h, tile;
  };
  std::vector<Task> tasks;
  for (int64_t b : longest_first(seqs, p.batch)) {
    const int64_t tiles = (seqs[b].q_len + kQueryTile - 1) / kQueryTile;
    for (int64_t h = 0; h < p.heads; ++h)
      for (int64_t t = 0; t < tiles; ++t)
        tasks.push_back({static_cast<int32_t>(b), static_cast<int32_t>(h), static_cast<int32_t>(t)});
  }
  run_tasks(
      static_cast<int64_t>(tasks.size()), [&] { return FwdScratch(p.head_dim); },
      [&](int64_t t, FwdScratch& w) {
        const Task& task = tasks[t];
        fwd_query_tile<T>(a, seqs[task.b], task.b, task.h, task.tile * kQueryTile, w);
      });
}

}  // namespace CPU_CAPABILITY
}  // namespace bertfast
