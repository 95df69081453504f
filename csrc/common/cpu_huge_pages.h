// Large CPU buffers that a kernel is about to write for the first time: ask Linux to back
// them with transparent huge pages (THP mode "madvise", the common default). First touch
// then costs one page fault per 2 MiB instead of one per 4 KiB, which for a fresh 500 MB
// gradient is most of the time of a memory-bound kernel. Harmless where THP is off.
#pragma once
#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace bertfast {

inline void advise_huge_pages(void* ptr, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
  if (bytes < 4 * kHugePage) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(ptr) + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(ptr) + bytes) & ~(kHugePage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // advice only: ignore errors
#else
  (void)ptr;
  (void)bytes;
#endif
}

}  // namespace bertfast
