// What the CPU attention kernels share: tile sizes, the per-sequence view of a problem (with
// the list of attendable keys of a padding mask), dynamic task scheduling, row gathers and
// the dropout mask. Compiled once per CPU capability, inside namespace bertfast::CPU_CAPABILITY.
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
#include "../common/philox_cpu.h"
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

// mult[r] = dropout_scale where query i's probability of key r (of a tile's bk keys, at the
// increasing positions pos(r)) is kept, 0 where dropped. Keys at consecutive positions (every
// tile but those a padding mask cuts into) take their draws 32 at a time from the vectorised
// Philox; the others one counter at a time. The same draws either way.
template <typename Pos>
inline void dropout_tile_row(const AttentionProblem& p, int64_t b, int64_t h, int64_t i, int64_t bk, Pos pos,
                             float* mult) {
  if (bk > 0 && pos(bk - 1) - pos(0) == bk - 1) {
    dropout_multipliers(static_cast<uint64_t>(*p.seed), p.threshold, p.dropout_scale,
                        dropout_counter(p, b, h, i, pos(0)), bk, mult);
    return;
  }
  DropoutRow drop(p);
  for (int64_t r = 0; r < bk; ++r) mult[r] = drop.keep(dropout_counter(p, b, h, i, pos(r))) ? p.dropout_scale : 0.0f;
}

}  // namespace CPU_CAPABILITY
}  // namespace bertfast
