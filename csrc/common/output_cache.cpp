// The CPU block cache behind empty_output (see output_cache.h for why it exists).
#include "output_cache.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>

namespace bertfast {
namespace {

// Below this, glibc's heap already reuses memory without new page faults.
constexpr size_t kMinCachedBytes = size_t{1} << 20;
// Block sizes are rounded up to this, so that shapes differing by a few rows share blocks.
constexpr size_t kGranule = size_t{1} << 20;

size_t default_limit_bytes() {
  if (const char* env = std::getenv("BERTFAST_CPU_CACHE_MB")) {
    char* end = nullptr;
    const long long mb = std::strtoll(env, &end, 10);
    TORCH_CHECK(end != env && *end == '\0' && mb >= 0, "BERTFAST_CPU_CACHE_MB must be a whole number of MiB >= 0, got '",
                env, "'");
    return static_cast<size_t>(mb) << 20;
  }
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  const size_t ram = pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
  return std::min<size_t>(size_t{2} << 30, ram / 8);
}

struct Block {
  void* ptr;
  size_t bytes;
};

class BlockCache final : public c10::Allocator {
 public:
  BlockCache() : limit_(default_limit_bytes()) {}

  // fork() copies the cache's memory but only the forking thread: a child forked while another
  // thread held the mutex would wait for it forever. Holding the mutex across fork() (it is
  // only ever held for a few list operations) leaves the child a consistent, unlocked cache.
  void lock_for_fork() { mutex_.lock(); }
  void unlock_after_fork() { mutex_.unlock(); }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinCachedBytes || limit_ == 0) {
      void* p = c10::alloc_cpu(n);
      return {p, p, &c10::free_cpu, c10::Device(c10::DeviceType::CPU)};
    }
    const size_t bytes = (n + kGranule - 1) / kGranule * kGranule;
    Block* block = take(bytes);
    if (block == nullptr) {
      void* p = nullptr;
      try {
        p = c10::alloc_cpu(bytes);
      } catch (const c10::Error&) {
        empty();  // out of memory: give the cached blocks back and try once more
        p = c10::alloc_cpu(bytes);
      }
      block = new Block{p, bytes};
    }
    return {block->ptr, block, &give_back, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }

  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {static_cast<int64_t>(cached_bytes_), static_cast<int64_t>(limit_), hits_, misses_};
  }

  void empty() {
    std::deque<Block*> blocks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(free_);
      cached_bytes_ = 0;
    }
    for (Block* b : blocks) release(b);
  }

 private:
  // The smallest free block of at least `bytes` that wastes at most 1/8 of it, or nullptr.
  Block* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if ((*it)->bytes >= bytes && (*it)->bytes <= bytes + bytes / 8 &&
          (best == free_.end() || (*it)->bytes < (*best)->bytes)) {
        best = it;
      }
    }
    if (best == free_.end()) {
      ++misses_;
      return nullptr;
    }
    ++hits_;
    Block* b = *best;
    free_.erase(best);
    cached_bytes_ -= b->bytes;
    return b;
  }

  // Keeps a freed block, evicting the oldest ones while the cache would exceed its limit.
  void put(Block* b) {
    std::deque<Block*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (b->bytes > limit_) {
        evicted.push_back(b);
      } else {
        while (cached_bytes_ + b->bytes > limit_) {
          evicted.push_back(free_.front());
          cached_bytes_ -= free_.front()->bytes;
          free_.pop_front();
        }
        free_.push_back(b);
        cached_bytes_ += b->bytes;
      }
    }
    for (Block* e : evicted) release(e);
  }

  static void release(Block* b) {
    c10::free_cpu(b->ptr);
    delete b;
  }

  static void give_back(void* ctx);

  const size_t limit_;
  std::mutex mutex_;
  std::deque<Block*> free_;  // oldest first
  size_t cached_bytes_ = 0;
  int64_t hits_ = 0, misses_ = 0;
};

// Never destroyed: tensors may be freed during interpreter shutdown, after static destructors.
BlockCache& cache() {
  static BlockCache* instance = [] {
    BlockCache* c = new BlockCache();
    pthread_atfork([] { cache().lock_for_fork(); }, [] { cache().unlock_after_fork(); },
                   [] { cache().unlock_after_fork(); });
    return c;
  }();
  return *instance;
}

void BlockCache::give_back(void* ctx) { cache().put(static_cast<Block*>(ctx)); }

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (options.device().type() != c10::DeviceType::CPU) return at::empty(sizes, options);
  return at::detail::empty_generic(sizes, &cache(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), std::nullopt);
}

at::Tensor zeros_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return empty_output(sizes, options).zero_();
}

std::vector<int64_t> cpu_cache_stats() { return cache().stats(); }

void empty_cpu_cache() { cache().empty(); }

}  // namespace bertfast
