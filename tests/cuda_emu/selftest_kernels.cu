// Broken kernels that the emulation must catch (tests/test_cuda_kernels_emulated.py's
// test_emulation_catches_*): each mistake below fails or misbehaves on a GPU too. Compiled
// through the same rewrites as csrc's kernels.
#include <cuda_runtime.h>

#include <cstdint>

namespace {

// Half of each warp waits at __syncthreads while the other half shuffles: a deadlock.
__global__ void divergent_barrier_kernel(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x % 32 < 16) {
    __syncthreads();
  } else {
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  }
  out[threadIdx.x] = v;
}

// Lanes 16..31 have returned when the rest shuffle with the full mask.
__global__ void shuffle_after_exit_kernel(float* out) {
  if (threadIdx.x % 32 >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

// Reads a neighbour warp's shared-memory value without a barrier in between: a race.
__global__ void missing_barrier_kernel(float* out) {
  __shared__ float values[64];
  values[threadIdx.x] = threadIdx.x + blockIdx.x;
  out[blockIdx.x * 64 + threadIdx.x] = values[(threadIdx.x + 32) % 64];
}

// Recursion deeper than any thread stack.
__device__ int deep(int n) {
  volatile char pad[1024];
  pad[0] = static_cast<char>(n);
  return n == 0 ? pad[0] : deep(n - 1) + pad[0];
}
__global__ void stack_overflow_kernel(int* out) { out[threadIdx.x] = deep(1 << 20); }

__global__ void __launch_bounds__(64) bounded_kernel(float* out) { out[threadIdx.x] = 1.0f; }

// Reads shared memory that no thread wrote: NaN here (garbage on a GPU).
__global__ void uninitialized_shared_kernel(float* out) {
  extern __shared__ float scratch[];
  out[threadIdx.x] = scratch[threadIdx.x];
}

}  // namespace

extern "C" int emu_selftest(int which, void* out) {
  bertfast_emu::g_error.clear();
  bertfast_emu::g_last_error = cudaSuccess;
  float* f = static_cast<float*>(out);
  switch (which) {
    case 0: divergent_barrier_kernel<<<1, 64>>>(f); break;
    case 1: shuffle_after_exit_kernel<<<1, 32>>>(f); break;
    case 2: missing_barrier_kernel<<<2, 64>>>(f); break;
    case 3: stack_overflow_kernel<<<1, 32>>>(static_cast<int*>(out)); break;
    case 4: bounded_kernel<<<1, 128>>>(f); break;
    case 5: uninitialized_shared_kernel<<<1, 32, 32 * sizeof(float)>>>(f); break;
    default: return -1;
  }
  return static_cast<int>(cudaGetLastError());
}
