// CPU kernels of attention, compiled once per CPU capability (see common/cpu_capability.h).
//
// Forward: one task per (sequence, head, tile of kQueryTile queries), in parallel. The query
// tile is packed transposed and pre-scaled (Qt, dim x queries), so a key tile's scores come
// out transposed, S^T (keys x queries): the softmax statistics of a query are then reduced
// across rows, element-wise on vectors of queries, with no horizontal sums. Online softmax
// over key tiles keeps the running max m, sum l and an unnormalised output O (queries x dim);
// the (seq x seq) matrix never exists. The forward saves lse = m + log(l).
//
// Backward: one task per (sequence, head); key tiles outer (dK, dV accumulate in a tile),
// query tiles inner (dQ accumulates for the whole sequence), recomputing P = exp(S - lse) as
// flash-attention 2 does, with Dvec = rowsum(dO * O). The order of every sum is fixed, so the
// CPU backward is always deterministic.
//
// Masked keys are skipped, not computed: each sequence's attendable keys form a list, and a
// tile of that list is gathered into a contiguous float32 buffer.
#pragma once
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "../common/philox.h"
#include "attention.h"
#include "attention_cpu_gemm.h"

namespace bertfast {
namespace CPU_CAPABILITY {

constexpr int64_t kQueryTile = 64;
constexpr int64_t kKeyTile = 64;
constexpr float kInf = std::numeric_limits<float>::infinity();

inline int64_t round_up_vec(int64_t n) { return (n + kVecLen - 1) / kVecLen * kVecLen; }

// Where sequence b sits and which keys it may attend.
struct SequenceView {
  int64_t q_len = 0, k_len = 0;
  int64_t q_token0 = 0, k_token0 = 0;  // first token (varlen: global index; padded: 0)
  int64_t lse_row0 = 0;                // first row of this sequence in the (heads, total_q) lse
  const int32_t* keys = nullptr;       // attendable keys (positions in the sequence); nullptr: all
  int64_t n_keys = 0;
  int64_t key_at(int64_t r) const { return keys ? keys[r] : r; }
};

// The per-sequence views of a problem, with the key lists of a padding mask.
class Sequences {
 public:
  explicit Sequences(const AttentionProblem& p) : p_(p) {
    if (p.key_mask) {
      offsets_.resize(p.batch + 1, 0);
      keys_.reserve(p.batch * p.seq_k);
      for (int64_t b = 0; b < p.batch; ++b) {
        for (int64_t j = 0; j < p.seq_k; ++j)
          if (p.key_mask[b * p.seq_k + j]) keys_.push_back(static_cast<int32_t>(j));
        offsets_[b + 1] = static_cast<int64_t>(keys_.size());
      }
    }
  }
  SequenceView operator[](int64_t b) const {
    SequenceView s;
    if (p_.cu_seqlens) {
      s.q_token0 = s.k_token0 = s.lse_row0 = p_.cu_seqlens[b];
      s.q_len = s.k_len = p_.cu_seqlens[b + 1] - p_.cu_seqlens[b];
    } else {
      s.q_len = p_.seq_q;
      s.k_len = p_.seq_k;
      s.lse_row0 = b * p_.seq_q;
    }
    s.n_keys = s.k_len;
    if (p_.key_mask) {
      s.keys = keys_.data() + offsets_[b];
      s.n_keys = offsets_[b + 1] - offsets_[b];
    }
    return s;
  }

 private:
  const AttentionProblem& p_;
  std::vector<int64_t> offsets_;
  std::vector<int32_t> keys_;
};

// Run body(task, scratch) for tasks 0 .. n-1 on the intra-op threads, each thread taking the
// next task from a shared counter. Tasks of uneven cost (sequences of different lengths) and
// threads that the OS pauses (a busy machine) then balance themselves, unlike a static split;
// each task writes only its own outputs, so the result does not depend on the schedule.
template <typename MakeScratch, typename Body>
void run_tasks(int64_t n, MakeScratch make_scratch, Body body) {
  std::atomic<int64_t> next{0};
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    if (begin >= end) return;
    auto scratch = make_scratch();
    for (int64_t t = next.fetch_add(1); t < n; t = next.fetch_add(1)) body(t, scratch);
  });
}

// Sequence indices, most work first: the last tasks to start are then the cheapest.
inline std::vector<int64_t> longest_first(const Sequences& seqs, int64_t batch) {
  std::vector<int64_t> order(batch);
  for (int64_t b = 0; b < batch; ++b) order[b] = b;
  auto work = [&](int64_t b) { return seqs[b].q_len * seqs[b].n_keys; };
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return work(x) > work(y); });
  return order;
}

template <typename T>
inline const T* row_ptr(const AttentionTensor& t, int64_t b, int64_t token, int64_t h) {
  return static_cast<const T*>(t.data) + b * t.batch_stride + token * t.token_stride + h * t.head_stride;
}

template <typename T>
inline T* row_ptr_mut(const AttentionTensor& t, int64_t b, int64_t token, int64_t h) {
  return static_cast<T*>(t.data) + b * t.batch_stride + token * t.token_stride + h * t.head_stride;
}

inline float bias_at(const AttentionProblem& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  const int64_t idx = b * p.bias_stride_b + h * p.bias_stride_h + i * p.bias_stride_q + j * p.bias_stride_k;
  switch (p.bias_dtype) {
    case DType::kFloat32: return static_cast<const float*>(p.bias)[idx];
    case DType::kBFloat16: return static_cast<float>(static_cast<const c10::BFloat16*>(p.bias)[idx]);
    case DType::kFloat16: return static_cast<float>(static_cast<const c10::Half*>(p.bias)[idx]);
  }
  return 0.0f;
}

// n (a multiple of kVecLen) floats; inline, since a memmove call per 256-byte row costs as
// much as the copy.
inline void copy_floats(const float* src, float* dst, int64_t n) {
  for (int64_t d = 0; d < n; d += kVecLen) fVec::loadu(src + d).store(dst + d);
}

template <typename T>
inline void prefetch_row(const T* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t off = 0; off < n * static_cast<int64_t>(sizeof(T)); off += 64) __builtin_prefetch(c + off);
}

template <typename T>
inline void load_row(const T* src, float* dst, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    copy_floats(src, dst, n);
  } else {
    at::vec::convert(src, dst, n);
  }
}

template <typename T>
inline void store_row_as(const float* src, T* dst, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    copy_floats(src, dst, n);
  } else {
    at::vec::convert(src, dst, n);
  }
}

// rows x D rows of sequence b, head h, positions pos(r), as contiguous float32 in `buf`;
// returns the rows and their stride. Always a copy, also for float32: rows of a
// (tokens, heads, dim) tensor sit heads*dim*4 bytes apart (3 KiB for BERT-base), a stride
// that maps a tile's rows onto a few L1 sets, and the GEMM would thrash on them.
template <typename T, typename Pos>
inline const float* gather_rows(const AttentionTensor& t, int64_t b, int64_t token0, int64_t h, int64_t rows,
                                int64_t D, Pos pos, float* buf, int64_t& ld) {
  constexpr int64_t kAhead = 4;  // rows sit a token stride apart: prefetch a few rows ahead
  for (int64_t r = 0; r < rows; ++r) {
    if (r + kAhead < rows) prefetch_row(row_ptr<T>(t, b, token0 + pos(r + kAhead), h), D);
    load_row(row_ptr<T>(t, b, token0 + pos(r), h), buf + r * D, D);
  }
  ld = D;
  return buf;
}

// dst (D x cols_pad) = src rows (rows x D)^T * mul, zero beyond `rows` columns.
template <typename T>
inline void pack_transposed(const AttentionTensor& t, int64_t b, int64_t token0, int64_t h, int64_t rows,
                            int64_t cols_pad, int64_t D, float mul, float* dst, float* row_buf) {
  for (int64_t i = 0; i < rows; ++i) {
    if (i + 4 < rows) prefetch_row(row_ptr<T>(t, b, token0 + i + 4, h), D);
    load_row(row_ptr<T>(t, b, token0 + i, h), row_buf, D);
    for (int64_t d = 0; d < D; ++d) dst[d * cols_pad + i] = row_buf[d] * mul;
  }
  for (int64_t d = 0; d < D; ++d)
    for (int64_t i = rows; i < cols_pad; ++i) dst[d * cols_pad + i] = 0.0f;
}

// Philox keep flags of a row of probabilities, one call per four consecutive counters.
class DropoutRow {
 public:
  DropoutRow(const AttentionProblem& p) : seed_(static_cast<uint64_t>(*p.seed)), threshold_(p.threshold) {}
  bool keep(uint64_t counter) {
    const uint64_t group = counter >> 2;
    if (group != group_) {
      group_ = group;
      bits_ = dropout_keep4(seed_, threshold_, group);
    }
    return (bits_ >> (counter & 3)) & 1u;
  }

 private:
  uint64_t seed_;
  uint32_t threshold_;
  uint64_t group_ = ~uint64_t(0);
  uint32_t bits_ = 0;
};

inline uint64_t dropout_counter(const AttentionProblem& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  return static_cast<uint64_t>(((b * p.heads + h) * p.counter_q + i) * p.counter_k + j);
}

// ---------------------------------------------------------------------------------------
// Forward

struct FwdScratch {
  std::vector<float> qt, s, o, k, v, m, l, alpha, row;
  FwdScratch(int64_t D)
      : qt(D * kQueryTile), s(kKeyTile * kQueryTile), o(kQueryTile * D), k(kKeyTile * D), v(kKeyTile * D),
        m(kQueryTile), l(kQueryTile), alpha(kQueryTile), row(D) {}
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
      for (int64_t i = 0; i < bq; ++i) {
        DropoutRow drop(p);
        for (int64_t r = 0; r < bk; ++r) {
          const bool keep = drop.keep(dropout_counter(p, b, h, i0 + i, pos(r)));
          S[r * bq_pad + i] = keep ? S[r * bq_pad + i] * p.dropout_scale : 0.0f;
        }
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

// ---------------------------------------------------------------------------------------
// Backward

struct BwdScratch {
  std::vector<float> qt, dot, q, dout, dvec, lse, dq, k, v, dk, dv, s, dp, z, row, row2;
  BwdScratch(int64_t D, int64_t q_len)
      : qt(D * round_up_vec(q_len)), dot(D * round_up_vec(q_len)), q(q_len * D), dout(q_len * D),
        dvec(round_up_vec(q_len)), lse(round_up_vec(q_len)), dq(q_len * D), k(kKeyTile * D), v(kKeyTile * D),
        dk(kKeyTile * D), dv(kKeyTile * D), s(kKeyTile * kQueryTile), dp(kKeyTile * kQueryTile),
        z(kKeyTile * kQueryTile), row(D), row2(D) {}
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
        for (int64_t i = 0; i < bq; ++i) {
          DropoutRow drop(p);
          for (int64_t r = 0; r < bk; ++r) {
            const bool keep = drop.keep(dropout_counter(p, b, h, i0 + i, pos(r)));
            const float mul = keep ? p.dropout_scale : 0.0f;
            Z[r * bq_pad + i] = S[r * bq_pad + i] * mul;
            dP[r * bq_pad + i] *= mul;
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

inline void attention_fwd_kernel(const AttentionFwdArgs& a, DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return attention_fwd_impl<float>(a);
    case DType::kBFloat16: return attention_fwd_impl<c10::BFloat16>(a);
    case DType::kFloat16: return attention_fwd_impl<c10::Half>(a);
  }
}

inline void attention_bwd_kernel(const AttentionBwdArgs& a, DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return attention_bwd_impl<float>(a);
    case DType::kBFloat16: return attention_bwd_impl<c10::BFloat16>(a);
    case DType::kFloat16: return attention_bwd_impl<c10::Half>(a);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace bertfast
