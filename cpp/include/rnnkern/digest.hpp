// Digests of memory: whether the bytes of a range changed since an earlier digest of it, read
// once (rnnkern.torch keeps a pack's weights' digests, not a copy of their bytes).
#pragma once

#include <cstddef>
#include <cstdint>

namespace rnnkern {

// A range's digest: per block of kDigestBlock bytes (the last one zero-padded) two sums mod 2^64,
// sum_i k_i w_i and sum_i k'_i w_i over the block's 32-bit words w_i, with keys k_i, k'_i drawn
// uniformly from [0, 2^32) once per process. Two different blocks get the same pair with
// probability at most 2^-64 over the keys (for a word that differs by d != 0, |d| < 2^32, at
// most one k_i in [0, 2^32) makes k_i d meet the rest of the sum mod 2^64, per sum). The same
// values on every ISA and thread count (integer sums).
inline constexpr std::size_t kDigestBlock = 4096;

// 64-bit values in the digest of `bytes` bytes: two per block begun.
inline std::size_t digest_size(std::size_t bytes) {
  return 2 * ((bytes + kDigestBlock - 1) / kDigestBlock);
}

// The digests of `count` ranges (data[j], bytes[j]) into out[j] (digest_size(bytes[j]) values
// each), the blocks of all of them shared by the pool's threads in one call.
void digests(int count, const void* const* data, const std::size_t* bytes,
             std::uint64_t* const* out);

}  // namespace rnnkern
