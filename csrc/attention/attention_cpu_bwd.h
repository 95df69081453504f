// CPU attention backward, compiled once per CPU capability.
//
// Backward: one task per (sequence, head); key tiles outer (dK, dV accumulate in a tile),
// query tiles inner (dQ accumulates for the whole sequence), recomputing P = exp(S - lse) as
// flash-attention 2 does, with Dvec = rowsum(dO * O). The order of every sum is fixed, so the
// CPU backward is always deterministic.
// With fewer (sequence, head) pairs than threads, each pair's key tiles are split across
// tasks, and their dQ partials are summed afterwards in a fixed order.
#pragma once
#include "attention_cpu_common.h"

namespace bertfast {
namespace CPU_CAPABILITY {

struct BwdScratch {
  std::vector<float> qt, dot, q, dout, dvec, lse, dq, k, v, dk, dv, s, dp, z, row, row2, mult;
  BwdScratch(int64_t D, int64_t q_len)
      : qt(D * round_up_vec(q_len)), dot(D * round_up_vec(q_len)), q(q_len * D), dout(q_len * D),
        dvec(round_up_vec(q_len)), lse(round_up_vec(q_len)), dq(q_len * D), k(kKeyTile * D), v(kKeyTile * D),
        dk(kKeyTile * D), dv(kKeyTile * D), s(kKeyTile * kQueryTile), dp(kKeyTile * kQueryTile),
        z(kKeyTile * kQueryTile), row(D), row2(D), mult(kKeyTile) {}
};

// Gradients from the keys of tiles [tile_begin, tile_end) of one (sequence, head). dQ goes to
// grad_q when dq_partial is null, else unscaled into dq_partial (q_len x D) for a later sum.
template <typename T>
void bwd_sequence_head(const AttentionBwdArgs& a, const SequenceView& seq, int64_t b, int64_t h, int64_t tile_begin,
                       int64_t tile_end, float* dq_partial, BwdScratch& w) {
  const AttentionProblem& p = a.p;
  const int64_t D = p.head_dim, Lq = seq.q_len, Lq_pad = round_up_vec(Lq);
  // Per (sequence, head): Q^T (pre-scaled) and dO^T for the score products, Q and dO rows,
  // Dvec = rowsum(dO * O) and the lse (padding columns: lse = +inf, so P = 0 there).
  pack_transposed<T>(a.q, b, seq.q_token0, h, Lq, Lq_pad, D, p.scale, w.qt.data(), w.row.data());
  pack_transposed<T>(a.grad_out, b, seq.q_token0, h, Lq, Lq_pad, D, 1.0f, w.dot.data(), w.row.data());
  int64_t ldq, lddo;
  auto same = [](int64_t i) { return i; };
  const float* Q = gather_rows<T>(a.q, b, seq.q_token0, h, Lq, D, same, w.q.data(), ldq);
  const float* dO = gather_rows<T>(a.grad_out, b, seq.q_token0, h, Lq, D, same, w.dout.data(), lddo);
  const float* lse_src = a.lse + h * p.total_q + seq.lse_row0;
  for (int64_t i = 0; i < Lq_pad; ++i) {
    w.lse[i] = i < Lq ? lse_src[i] : kInf;
    w.dvec[i] = 0.0f;
  }
  for (int64_t i = 0; i < Lq; ++i) {
    load_row(row_ptr<T>(a.out, b, seq.q_token0 + i, h), w.row.data(), D);
    const float* g = dO + i * lddo;
    fVec acc(0.0f);
    for (int64_t d = 0; d < D; d += kVecLen) acc = at::vec::fmadd(fVec::loadu(g + d), fVec::loadu(w.row.data() + d), acc);
    w.dvec[i] = at::vec::vec_reduce_all<float>([](fVec& x, fVec& y) { return x + y; }, acc);
  }
  std::fill(w.dq.begin(), w.dq.begin() + Lq * D, 0.0f);

  float *S = w.s.data(), *dP = w.dp.data(), *Z = w.z.data();
  for (int64_t r0 = tile_begin * kKeyTile; r0 < std::min(seq.n_keys, tile_end * kKeyTile); r0 += kKeyTile) {
    const int64_t bk = std::min(kKeyTile, seq.n_keys - r0);
    auto pos = [&](int64_t r) { return seq.key_at(r0 + r); };
    int64_t ldk, ldv;
    const float* K = gather_rows<T>(a.k, b, seq.k_token0, h, bk, D, pos, w.k.data(), ldk);
    const float* V = gather_rows<T>(a.v, b, seq.k_token0, h, bk, D, pos, w.v.data(), ldv);
    std::fill(w.dk.begin(), w.dk.begin() + bk * D, 0.0f);
    std::fill(w.dv.begin(), w.dv.begin() + bk * D, 0.0f);
    for (int64_t i0 = 0; i0 < Lq; i0 += kQueryTile) {
      const int64_t bq = std::min(kQueryTile, Lq - i0), bq_pad = round_up_vec(bq);
      // S^T = K Q^T (+ bias); P^T = exp(S^T - lse)
      small_gemm(bk, bq_pad, D, K, ldk, 1, w.qt.data() + i0, Lq_pad, S, bq_pad, false);
      if (p.bias) {
        for (int64_t r = 0; r < bk; ++r)
          for (int64_t i = 0; i < bq; ++i) S[r * bq_pad + i] += bias_at(p, b, h, i0 + i, pos(r));
      }
      for (int64_t r = 0; r < bk; ++r)
        for (int64_t iv = 0; iv < bq_pad; iv += kVecLen) {
          float* s = S + r * bq_pad + iv;
          (fVec::loadu(s) - fVec::loadu(w.lse.data() + i0 + iv)).exp_u20().store(s);
        }
      // dP~^T = V dO^T: the gradient of the dropped probabilities.
      small_gemm(bk, bq_pad, D, V, ldv, 1, w.dot.data() + i0, Lq_pad, dP, bq_pad, false);
      const float* Zt = S;  // the probabilities that multiplied V in the forward
      if (p.seed) {
        float* mult = w.mult.data();
        for (int64_t i = 0; i < bq; ++i) {
          dropout_tile_row(p, b, h, i0 + i, bk, pos, mult);
          for (int64_t r = 0; r < bk; ++r) {
            Z[r * bq_pad + i] = S[r * bq_pad + i] * mult[r];
            dP[r * bq_pad + i] *= mult[r];
          }
        }
        Zt = Z;
      }
      // dV (bk x D) += Z^T dO
      small_gemm(bk, D, bq, Zt, bq_pad, 1, dO + i0 * lddo, lddo, w.dv.data(), D, true);
      // dS = P * (dP - Dvec), in place of S
      for (int64_t r = 0; r < bk; ++r)
        for (int64_t iv = 0; iv < bq_pad; iv += kVecLen) {
          float* s = S + r * bq_pad + iv;
          const fVec ds = fVec::loadu(s) * (fVec::loadu(dP + r * bq_pad + iv) - fVec::loadu(w.dvec.data() + i0 + iv));
          ds.store(s);
        }
      if (a.grad_bias) {
        float* gb = a.grad_bias + ((b * p.heads + h) * p.seq_q + i0) * p.seq_k;
        for (int64_t r = 0; r < bk; ++r)
          for (int64_t i = 0; i < bq; ++i) gb[i * p.seq_k + pos(r)] = S[r * bq_pad + i];
      }
      // dK (bk x D) += dS^T Q ; dQ (bq x D) += dS K   (scale applied at the end)
      small_gemm(bk, D, bq, S, bq_pad, 1, Q + i0 * ldq, ldq, w.dk.data(), D, true);
      small_gemm(bq, D, bk, S, 1, bq_pad, K, ldk, w.dq.data() + i0 * D, D, true);
    }
    for (int64_t r = 0; r < bk; ++r) {
      float* dk = w.dk.data() + r * D;
      for (int64_t d = 0; d < D; d += kVecLen) (fVec::loadu(dk + d) * fVec(p.scale)).store(dk + d);
      store_row_as(dk, row_ptr_mut<T>(a.grad_k, b, seq.k_token0 + pos(r), h), D);
      store_row_as(w.dv.data() + r * D, row_ptr_mut<T>(a.grad_v, b, seq.k_token0 + pos(r), h), D);
    }
  }
  if (dq_partial) {
    copy_floats(w.dq.data(), dq_partial, Lq * D);
    return;
  }
  for (int64_t i = 0; i < Lq; ++i) {
    float* dq = w.dq.data() + i * D;
    for (int64_t d = 0; d < D; d += kVecLen) (fVec::loadu(dq + d) * fVec(p.scale)).store(dq + d);
    store_row_as(dq, row_ptr_mut<T>(a.grad_q, b, seq.q_token0 + i, h), D);
  }
}

inline int64_t key_tiles(const SequenceView& s) { return (s.n_keys + kKeyTile - 1) / kKeyTile; }

template <typename T>
void attention_bwd_impl(const AttentionBwdArgs& a) {
  const AttentionProblem& p = a.p;
  const Sequences seqs(p);
  int64_t max_q = 0;
  for (int64_t b = 0; b < p.batch; ++b) max_q = std::max(max_q, seqs[b].q_len);
  const std::vector<int64_t> order = longest_first(seqs, p.batch);
  const int64_t pairs = p.batch * p.heads, threads = at::get_num_threads();
  int64_t max_tiles = 1;
  for (int64_t b = 0; b < p.batch; ++b) max_tiles = std::max(max_tiles, key_tiles(seqs[b]));
  // Fewer (sequence, head) pairs than threads (long sequences, few heads): split each pair's
  // key tiles into `splits` ranges with a dQ partial each, summed afterwards in a fixed order.
  const int64_t splits = pairs >= 2 * threads ? 1 : std::min(max_tiles, (2 * threads + pairs - 1) / pairs);
  if (splits == 1) {
    run_tasks(
        pairs, [&] { return BwdScratch(p.head_dim, max_q); },
        [&](int64_t t, BwdScratch& w) {
          const int64_t b = order[t / p.heads], h = t % p.heads;
          bwd_sequence_head<T>(a, seqs[b], b, h, 0, key_tiles(seqs[b]), nullptr, w);
        });
    return;
  }
  const int64_t D = p.head_dim;
  std::vector<float> partials(pairs * splits * max_q * D);
  run_tasks(
      pairs * splits, [&] { return BwdScratch(D, max_q); },
      [&](int64_t t, BwdScratch& w) {
        const int64_t pair = t / splits, c = t % splits, b = pair / p.heads, h = pair % p.heads;
        const int64_t tiles = key_tiles(seqs[b]);
        bwd_sequence_head<T>(a, seqs[b], b, h, c * tiles / splits, (c + 1) * tiles / splits,
                             partials.data() + t * max_q * D, w);
      });
  at::parallel_for(0, pairs, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row(D);
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t b = pair / p.heads, h = pair % p.heads;
      const SequenceView seq = seqs[b];
      for (int64_t i = 0; i < seq.q_len; ++i) {
        for (int64_t d = 0; d < D; d += kVecLen) {
          fVec acc(0.0f);
          for (int64_t c = 0; c < splits; ++c)
            acc = acc + fVec::loadu(partials.data() + ((pair * splits + c) * max_q + i) * D + d);
          (acc * fVec(p.scale)).store(row.data() + d);
        }
        store_row_as(row.data(), row_ptr_mut<T>(a.grad_q, b, seq.q_token0 + i, h), D);
      }
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace bertfast
