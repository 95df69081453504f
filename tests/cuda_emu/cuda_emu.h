// A CPU emulation of exactly the CUDA features bertfast's kernels use, so that the unmodified
// kernel sources (csrc/**/*_kernels.cu) compile with g++ and run on a machine without a GPU.
// Force-included (g++ -include cuda_emu.h) before each rewritten .cu file; build.py turns the
// `kernel<<<grid, block, smem, stream>>>(args)` launches into bertfast_emu::launch calls,
// `extern __shared__ T name[]` into a pointer to the launch's dynamic shared memory, and adds
// the __launch_bounds__ check and the poisoning of static shared arrays below.
//
// A grid runs block by block. The threads of a block are cooperative fibers (ucontext) that
// run one at a time until they reach a barrier, so that
//  - __syncthreads() / __syncthreads_or() wait for every thread of the block that has not exited;
//  - __syncwarp(), __shfl_xor_sync() and the mma.sync emulation wait for all 32 lanes of the warp
//    (a warp op with a lane that has exited, or threads stuck at different barriers, is reported
//    as a launch failure, not a hang);
//  - `__shared__` variables are `static` (blocks run one at a time, so one copy serves all).
// Dynamic shared memory is filled with 0xFF bytes (NaN in every float format) before each
// block, so a kernel that reads shared memory it did not write sees NaN, as garbage would.
// Each warp runs up to its next __syncthreads before the next warp starts, lanes in order, or
// blocks, warps and lanes all in reverse order (g_reverse_schedule): a kernel whose result
// differs between the two schedules has a race (a missing barrier, blocks writing one place).
// What fails a launch as on a GPU: a block above the kernel's __launch_bounds__ or 1024 threads,
// too much dynamic shared memory without the cudaFuncSetAttribute opt-in, a fault (a misaligned
// 16-byte access faults here too: g++ emits aligned SSE loads for 16-byte-aligned types), and a
// failed assert() (a device-side assert).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

// Host meanings of the CUDA qualifiers (cuda_runtime.h defined them as attributes g++ ignores).
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#undef __align__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

namespace bertfast_emu {

enum class State { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kDone };

struct Fiber {
  ucontext_t context;
  uint3 thread_idx;
  int linear = 0;  // x + y * blockDim.x + z * blockDim.x * blockDim.y
  State state = State::kRunnable;
};

constexpr int kMaxThreads = 1024;
constexpr int kMaxWarps = kMaxThreads / 32;
constexpr size_t kStackBytes = 256 * 1024;  // UBSan's reports need more than the kernels
constexpr size_t kDefaultSmemLimit = 48 * 1024;
constexpr size_t kOptInSmemLimit = 163 * 1024;  // sm_80, the smallest of the targets

// Launch state. Everything runs on the calling OS thread; these are its globals.
inline Fiber* g_current = nullptr;
inline uint3 g_block_idx;
inline dim3 g_block_dim, g_grid_dim;
inline ucontext_t g_scheduler;
inline void (*g_body)(void*) = nullptr;
inline void* g_body_arg = nullptr;
inline std::vector<unsigned char> g_dynamic_smem;
inline int g_block_or_pending = 0, g_block_or_result = 0;
inline std::string g_error;                   // first failure of the current launch sequence
inline cudaError_t g_last_error = cudaSuccess;  // what cudaGetLastError returns
inline bool g_reverse_schedule = false;
inline int g_sm_count = 2;
inline uint64_t g_block_serial = 0;  // counts the blocks run

// Per warp exchange slots of the shuffles and the MMA (read between two warp barriers).
inline uint64_t g_shuffle_slots[kMaxWarps][32];
struct MmaFragments {
  uint32_t a[4], b[2];
};
inline MmaFragments g_mma_slots[kMaxWarps][32];

inline void fail(const std::string& message) {
  if (g_error.empty()) g_error = message;
}

inline void* dynamic_smem() { return g_dynamic_smem.data(); }

// Gives control back to the scheduler until the barrier this fiber waits at is released.
inline void wait_at(State s) {
  Fiber* f = g_current;
  f->state = s;
  swapcontext(&f->context, &g_scheduler);
}

inline void warp_barrier() { wait_at(State::kAtWarpBarrier); }

inline void fiber_main() {
  g_body(g_body_arg);
  g_current->state = State::kDone;  // uc_link returns to the scheduler
}

// Stacks of all fibers of a block; reserved once, pages are committed only as they are used.
// The lowest page of each is a guard: an overflow faults instead of writing the next stack.
inline char* stacks() {
  static char* s = [] {
    char* p = static_cast<char*>(mmap(nullptr, kMaxThreads * kStackBytes, PROT_READ | PROT_WRITE,
                                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    for (int i = 0; i < kMaxThreads; ++i) mprotect(p + i * kStackBytes, 4096, PROT_NONE);
    return p;
  }();
  return s;
}

inline std::string block_name() {
  return "block (" + std::to_string(g_block_idx.x) + "," + std::to_string(g_block_idx.y) + "," +
         std::to_string(g_block_idx.z) + ")";
}

// Runs warp w until each of its lanes has exited or waits at __syncthreads, releasing its warp
// barriers as they fill; false on a failure (see g_error).
inline bool run_warp(std::vector<Fiber>& fibers, int w) {
  const int n = static_cast<int>(fibers.size());
  const int w0 = 32 * w, lanes = (w0 + 32 < n ? 32 : n - w0);
  for (;;) {
    for (int k = 0; k < lanes; ++k) {
      Fiber& f = fibers[w0 + (g_reverse_schedule ? lanes - 1 - k : k)];
      if (f.state != State::kRunnable) continue;
      g_current = &f;
      swapcontext(&g_scheduler, &f.context);
      if (!g_error.empty()) return false;
    }
    int at_warp = 0, done = 0;
    for (int i = w0; i < w0 + lanes; ++i) {
      at_warp += fibers[i].state == State::kAtWarpBarrier;
      done += fibers[i].state == State::kDone;
    }
    if (at_warp == 0) return true;
    if (at_warp + done < lanes) {
      fail(block_name() + ", warp " + std::to_string(w) +
           ": some lanes wait at a warp operation, others at __syncthreads (a deadlock)");
      return false;
    }
    if (at_warp < 32) {
      fail(block_name() + ", warp " + std::to_string(w) + ": a warp-synchronous operation (full mask) with " +
           std::to_string(32 - at_warp) + " lanes exited or missing");
      return false;
    }
    for (int i = w0; i < w0 + lanes; ++i) fibers[i].state = State::kRunnable;
  }
}

// Runs the threads of the current block to completion; false on a failure (see g_error).
// Each warp runs up to its next __syncthreads before the next warp starts (the largest skew
// between warps a GPU may show), in warp order or, with g_reverse_schedule, the reverse.
inline bool run_block(std::vector<Fiber>& fibers) {
  const int n = static_cast<int>(fibers.size()), warps = (n + 31) / 32;
  char* stack = stacks();
  for (int i = 0; i < n; ++i) {
    Fiber& f = fibers[i];
    f.linear = i;
    const unsigned x = g_block_dim.x, y = g_block_dim.y;
    f.thread_idx = make_uint3(i % x, (i / x) % y, i / (x * y));
    f.state = State::kRunnable;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = stack + static_cast<size_t>(i) * kStackBytes;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &g_scheduler;
    makecontext(&f.context, fiber_main, 0);
  }
  g_block_or_pending = g_block_or_result = 0;
  for (;;) {
    for (int k = 0; k < warps; ++k)
      if (!run_warp(fibers, g_reverse_schedule ? warps - 1 - k : k)) return false;
    bool any = false;  // every thread has exited or waits at __syncthreads: release it
    for (Fiber& f : fibers)
      if (f.state == State::kAtBlockBarrier) {
        f.state = State::kRunnable;
        any = true;
      }
    if (!any) return true;
    g_block_or_result = g_block_or_pending;
    g_block_or_pending = 0;
  }
}

template <typename F>
void call_body(void* body) {
  (*static_cast<F*>(body))();
}

template <typename F>
const void* kernel_id(F* kernel) {
  return reinterpret_cast<const void*>(kernel);
}

// Opt-in dynamic shared memory limits set with cudaFuncSetAttribute, per kernel.
struct SmemOptIn {
  const void* kernel;
  int bytes;
};
inline std::vector<SmemOptIn>& smem_opt_ins() {
  static std::vector<SmemOptIn> v;
  return v;
}

inline size_t smem_limit(const void* kernel) {
  for (const SmemOptIn& o : smem_opt_ins())
    if (o.kernel == kernel) return static_cast<size_t>(o.bytes) > kDefaultSmemLimit ? o.bytes : kDefaultSmemLimit;
  return kDefaultSmemLimit;
}

inline void launch_failed(cudaError_t err, const std::string& why) {
  fail(why);
  g_last_error = err;
}

// A fault in a kernel (a misaligned vector access, for which g++ emits an aligned SSE load just
// as the GPU faults, or a bad address) ends the launch with cudaErrorIllegalAddress instead of
// the process: SIGSEGV / SIGBUS jump back to the launch.
inline sigjmp_buf g_fault_jump;
inline void* g_fault_address = nullptr;
inline bool g_in_launch = false;
inline std::string g_assert_message;  // a failed device-side assert (emu_shim.cpp's __assert_fail)

inline void on_fault(int, siginfo_t* info, void*) {
  g_fault_address = info->si_addr;
  siglongjmp(g_fault_jump, 1);
}

struct FaultGuard {
  struct sigaction old_segv, old_bus;
  stack_t old_stack;
  FaultGuard() {
    static std::vector<char> handler_stack(256 * 1024);  // the handler runs here (a fiber's stack may be full)
    stack_t st = {};
    st.ss_sp = handler_stack.data();
    st.ss_size = handler_stack.size();
    sigaltstack(&st, &old_stack);
    struct sigaction sa = {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
  }
  ~FaultGuard() {
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
    sigaltstack(&old_stack, nullptr);
  }
};

// kernel<<<grid, block, smem, stream>>>(args) becomes launch(kernel_id(kernel), [&] { kernel(args); }, grid, ...).
template <typename F>
void launch(const void* kernel, F&& body, dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr) {
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (threads == 0 || threads > kMaxThreads || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.y > 65535 || grid.z > 65535) {
    launch_failed(cudaErrorInvalidConfiguration,
                  "invalid launch configuration: grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) +
                      "," + std::to_string(grid.z) + ") block (" + std::to_string(block.x) + "," +
                      std::to_string(block.y) + "," + std::to_string(block.z) + ")");
    return;
  }
  if (smem > smem_limit(kernel)) {
    launch_failed(cudaErrorInvalidValue, std::to_string(smem) + " bytes of dynamic shared memory, above the " +
                                             std::to_string(smem_limit(kernel)) + " the kernel may use");
    return;
  }
  if (!g_error.empty()) return;  // an earlier launch failed: later kernels would read garbage
  std::vector<Fiber> fibers(threads);
  g_block_dim = block;
  g_grid_dim = grid;
  g_body = &call_body<std::remove_reference_t<F>>;
  g_body_arg = &body;
  FaultGuard guard;
  const int jumped = sigsetjmp(g_fault_jump, 1);
  if (jumped == 2) {
    g_in_launch = false;
    launch_failed(cudaErrorAssert, "device-side assert triggered in " + block_name() + ", thread " +
                                       std::to_string(g_current->linear) + ": " + g_assert_message);
    return;
  }
  if (jumped != 0) {
    g_in_launch = false;
    char where[64];
    std::snprintf(where, sizeof(where), "%p", g_fault_address);
    launch_failed(cudaErrorIllegalAddress, "illegal memory access (fault at " + std::string(where) + ") in " +
                                               block_name() + ", thread " + std::to_string(g_current->linear) +
                                               " (a misaligned vector load or an address out of bounds)");
    return;
  }
  const uint64_t blocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  for (uint64_t i = 0; i < blocks; ++i) {  // blocks in order, or in reverse (g_reverse_schedule)
    const uint64_t b = g_reverse_schedule ? blocks - 1 - i : i;
    g_block_idx = make_uint3(b % grid.x, (b / grid.x) % grid.y, b / (static_cast<uint64_t>(grid.x) * grid.y));
    g_dynamic_smem.assign(smem + 16, 0xFF);
    ++g_block_serial;
    g_in_launch = true;
    const bool ok = run_block(fibers);
    g_in_launch = false;
    if (!ok) {
      g_last_error = cudaErrorLaunchFailure;
      return;
    }
  }
}

// Warp-level operations: every lane deposits, a warp barrier, every lane reads, a barrier
// again so that no lane overwrites a slot before all have read it.
inline void check_full_mask(unsigned mask, const char* what) {
  if (mask != 0xffffffffu) fail(std::string(what) + ": only the full mask is emulated");
}

template <typename T>
T shfl_xor(unsigned mask, T v, int lane_mask) {
  static_assert(sizeof(T) <= 8, "shuffled values are at most 8 bytes");
  check_full_mask(mask, "__shfl_xor_sync");
  const int warp = g_current->linear / 32, lane = g_current->linear % 32;
  std::memcpy(&g_shuffle_slots[warp][lane], &v, sizeof(T));
  warp_barrier();
  T r;
  std::memcpy(&r, &g_shuffle_slots[warp][(lane ^ lane_mask) & 31], sizeof(T));
  warp_barrier();
  return r;
}

inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
float mma_element(uint32_t packed, int half) {
  T v;
  const uint16_t bits = static_cast<uint16_t>(packed >> (16 * half));
  std::memcpy(&v, &bits, 2);
  return to_float(v);
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: C (16x8) += A (16x16) B (16x8), fp32
// accumulation, fragments in the PTX ISA layout (lane = 4*g + t; see attention_mma.cuh).
template <typename T>
void mma_16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  const int warp = g_current->linear / 32, lane = g_current->linear % 32;
  MmaFragments& mine = g_mma_slots[warp][lane];
  std::memcpy(mine.a, a, sizeof(mine.a));
  std::memcpy(mine.b, b, sizeof(mine.b));
  warp_barrier();
  const MmaFragments* f = g_mma_slots[warp];
  // A[m][k]: lane 4*(m%8) + (k%8)/2, register (m >= 8) + 2*(k >= 8), half k%2.
  auto A = [&](int m, int k) { return mma_element<T>(f[4 * (m % 8) + (k % 8) / 2].a[(m >= 8) + 2 * (k >= 8)], k % 2); };
  // B[k][n]: lane 4*n + (k%8)/2, register (k >= 8), half k%2.
  auto B = [&](int k, int n) { return mma_element<T>(f[4 * n + (k % 8) / 2].b[k >= 8], k % 2); };
  const int g = lane / 4, t = lane % 4;
  for (int e = 0; e < 4; ++e) {
    const int m = g + 8 * (e / 2), n = 2 * t + (e % 2);
    float acc = c[e];
    for (int k = 0; k < 16; ++k) acc += A(m, k) * B(k, n);
    c[e] = acc;
  }
  warp_barrier();
}

// A static __shared__ array (one copy for all blocks) is filled with 0xFF bytes by the first
// thread of each block that reaches its declaration: before any thread of the block can write it.
struct PoisonedShared {
  const void* address;
  uint64_t block_serial;
};
inline std::vector<PoisonedShared>& poisoned_shared() {
  static std::vector<PoisonedShared> v;
  return v;
}
inline void poison_shared(void* address, size_t bytes) {
  for (PoisonedShared& p : poisoned_shared())
    if (p.address == address) {
      if (p.block_serial != g_block_serial) {
        std::memset(address, 0xFF, bytes);
        p.block_serial = g_block_serial;
      }
      return;
    }
  std::memset(address, 0xFF, bytes);
  poisoned_shared().push_back({address, g_block_serial});
}

// A kernel declared __launch_bounds__(max_threads) does not launch with a larger block.
inline void check_launch_bounds(int max_threads) {
  const unsigned threads = g_block_dim.x * g_block_dim.y * g_block_dim.z;
  if (threads > static_cast<unsigned>(max_threads))
    fail("a block of " + std::to_string(threads) + " threads launched a kernel declared __launch_bounds__(" +
         std::to_string(max_threads) + ") (cudaErrorLaunchOutOfResources on a GPU)");
}

}  // namespace bertfast_emu

// Built-in variables of the running thread and block.
#define threadIdx (bertfast_emu::g_current->thread_idx)
#define blockIdx (bertfast_emu::g_block_idx)
#define blockDim (bertfast_emu::g_block_dim)
#define gridDim (bertfast_emu::g_grid_dim)

inline void __syncthreads() { bertfast_emu::wait_at(bertfast_emu::State::kAtBlockBarrier); }
inline int __syncthreads_or(int predicate) {
  bertfast_emu::g_block_or_pending |= predicate != 0;
  bertfast_emu::wait_at(bertfast_emu::State::kAtBlockBarrier);
  return bertfast_emu::g_block_or_result;
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  bertfast_emu::check_full_mask(mask, "__syncwarp");
  bertfast_emu::warp_barrier();
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  if (width != 32) bertfast_emu::fail("__shfl_xor_sync: only width 32 is emulated");
  return bertfast_emu::shfl_xor(mask, v, lane_mask);
}

// Fast-math intrinsics: their host counterparts (the device versions are less accurate, so
// the emulation is at least as accurate as the GPU; tolerances must allow the GPU's error).
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

// cuda_runtime.h declares the typed overload only for nvcc.
template <typename T>
inline cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}
