// Large CPU outputs of bertfast's ops come from a small cache of freed blocks.
//
// Why: a fresh multi-megabyte buffer from malloc is fresh pages from the kernel, and the first
// write to each 4 KiB page costs about a microsecond (a page fault plus zeroing). For the 25 MB
// gradient of a LayerNorm that is ~6 ms, more than the kernel that fills it; for a 500 MB
// cross-entropy gradient, ~130 ms. Training asks for the same shapes every step, so the blocks
// freed in one step are exactly the ones the next step wants: the CUDA caching allocator does
// the same thing on the GPU. The cache is bounded (BERTFAST_CPU_CACHE_MB, default the smaller
// of 2 GiB and 1/8 of RAM; 0 turns it off) and bertfast.empty_cpu_cache() releases it.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace bertfast {

// An uninitialised tensor for an op's output: on CPU, large ones come from the block cache;
// elsewhere (CUDA, where torch already caches) plain at::empty.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);
at::Tensor zeros_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// [bytes held in the cache, its limit, allocations served from it, allocations that were not].
std::vector<int64_t> cpu_cache_stats();
// Frees every cached block (blocks in use are unaffected and return to the cache when freed).
void empty_cpu_cache();

}  // namespace bertfast
