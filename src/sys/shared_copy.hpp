// sys layer (internal): copying a large block into memory that another
// process reads next (a worker's arena, a bulk slab).
//
// An ordinary memcpy first reads every destination line into this core's
// cache (read for ownership). When the reader on another core still holds
// those lines from the block before, each one is fetched back across cores
// first: on this project's 2-core VM, a caller staging 1 MiB map arguments
// while two workers read the regions before copied at 6-7 GB/s against
// 21 GB/s alone. Non-temporal stores write whole lines without reading them
// and leave nothing in this core's cache that the reader must steal.
#pragma once
#include <cstddef>

namespace mproc::sys {

// From here up, copy_to_shared uses non-temporal stores (below, memcpy:
// the block fits in cache and the reader may find it there).
inline constexpr std::size_t kStreamingCopyBytes = std::size_t{256} << 10;

// Copies n bytes from src to dst (not overlapping), with non-temporal
// stores from kStreamingCopyBytes on x86-64 and a store fence after them, so
// that a descriptor published afterwards (a release store, a send()) is
// seen after the bytes. Elsewhere, memcpy.
void copy_to_shared(void* dst, const void* src, std::size_t n) noexcept;

}  // namespace mproc::sys
