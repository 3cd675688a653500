#include "rnnkern/digest.hpp"

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "rnnkern/rnnkern.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define RNNKERN_DIGEST_X86 1
#endif

namespace rnnkern {
namespace {

constexpr std::size_t kWords = kDigestBlock / 4;  // 32-bit words per block
// Blocks a thread reads side by side: 10 MiB of weights took 0.13-0.15 ms with 4, 0.19-0.26 ms
// with 1 (2 threads, in cache; from memory 0.60 against 0.68-0.92 ms).
constexpr int kStreams = 4;
static_assert(kWords % 16 == 0, "whole AVX-512 vectors per block");

// The keys of word i of a block: k[i] and k2[i] in [0, 2^32), each held in a 64-bit lane so that
// the vector paths multiply them by the words' low halves as they load (vpmuludq): the even
// words' keys first, then the odd words', per group of 2L words (L lanes: 8 for AVX-512, 4 for
// AVX2). kw[set][i] is the key of word i in plain order (the scalar path).
struct Keys {
  std::uint32_t kw[2][kWords];           // (2, kWords): key set, word
  alignas(64) std::uint64_t z[2][kWords];  // AVX-512 order: per set, per 16 words: 8 even, 8 odd
  alignas(64) std::uint64_t y[2][kWords];  // AVX2 order: per set, per 8 words: 4 even, 4 odd
  Keys() {
    std::random_device seed;
    std::mt19937_64 gen((std::uint64_t{seed()} << 32) ^ seed());
    for (auto& set : kw)
      for (auto& k : set) k = static_cast<std::uint32_t>(gen() >> 32);
    for (int s = 0; s < 2; ++s)
      for (std::size_t i = 0; i < kWords; ++i) {
        z[s][i] = kw[s][i / 16 * 16 + (i % 16 < 8 ? 2 * (i % 16) : 2 * (i % 16 - 8) + 1)];
        y[s][i] = kw[s][i / 8 * 8 + (i % 8 < 4 ? 2 * (i % 8) : 2 * (i % 8 - 4) + 1)];
      }
  }
};

const Keys& keys() {
  static const Keys k;
  return k;
}

// Sums s[t][0] += k[i] w[t][i], s[t][1] += k2[i] w[t][i] over words [from, n) of S blocks
// (w[t]: block t's first word).
template <int S>
void sums_scalar(const Keys& k, const std::uint32_t* const* w, std::size_t from, std::size_t n,
                 std::uint64_t* const* s) {
  for (int t = 0; t < S; ++t)
    for (std::size_t i = from; i < n; ++i) {
      s[t][0] += std::uint64_t{k.kw[0][i]} * w[t][i];
      s[t][1] += std::uint64_t{k.kw[1][i]} * w[t][i];
    }
}

#ifdef RNNKERN_DIGEST_X86
// GCC 12's intrinsics fill unused mask-operand vectors with self-initialized "undefined" values,
// which -Wuninitialized reports in target("avx512f") code of a file built without it; -Wpsabi
// notes vector values in sums_vec, which is only ever inlined into a targeted function.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wpsabi"

// Words [0, n / L * L) of S blocks side by side (more streams from memory per core), with the
// vector operations of Ops (L = Ops::kWords words per vector) and the keys in Ops's order
// (Keys); returns the words done. Inlined by sums<Ops, S> (flatten), whose target the Ops need.
template <class Ops, int S>
std::size_t sums_vec(const std::uint64_t* const* key, const std::uint32_t* const* w, std::size_t n,
                     std::uint64_t* const* s) {
  using V = typename Ops::V;
  constexpr std::size_t L = Ops::kWords;
  V acc[S][4];  // (S, 4) of (L / 2,) u64: per block, k's even and odd words', then k2's
  for (auto& a : acc)
    for (auto& v : a) v = Ops::zero();
  const std::size_t full = n / L * L;
  for (std::size_t i = 0; i < full; i += L) {
    const V ka = Ops::load(key[0] + i), ka2 = Ops::load(key[0] + i + L / 2);  // even, odd
    const V kb = Ops::load(key[1] + i), kb2 = Ops::load(key[1] + i + L / 2);
    for (int t = 0; t < S; ++t) {
      const V v = Ops::loadu(w[t] + i);  // per 64-bit lane: an even word low, an odd word high
      const V odd = Ops::high(v);
      acc[t][0] = Ops::add(acc[t][0], Ops::mul(v, ka));
      acc[t][1] = Ops::add(acc[t][1], Ops::mul(odd, ka2));
      acc[t][2] = Ops::add(acc[t][2], Ops::mul(v, kb));
      acc[t][3] = Ops::add(acc[t][3], Ops::mul(odd, kb2));
    }
  }
  for (int t = 0; t < S; ++t) {
    s[t][0] += Ops::sum(Ops::add(acc[t][0], acc[t][1]));
    s[t][1] += Ops::sum(Ops::add(acc[t][2], acc[t][3]));
  }
  return full;
}

#define RNNKERN_DIGEST_OP(isa) __attribute__((target(isa))) static
#ifndef RNNKERN_NO_AVX512
struct Avx512 {
  using V = __m512i;
  static constexpr std::size_t kWords = 16;
  RNNKERN_DIGEST_OP("avx512f") V zero() { return _mm512_setzero_si512(); }
  RNNKERN_DIGEST_OP("avx512f") V load(const std::uint64_t* p) { return _mm512_load_si512(p); }
  RNNKERN_DIGEST_OP("avx512f") V loadu(const std::uint32_t* p) { return _mm512_loadu_si512(p); }
  RNNKERN_DIGEST_OP("avx512f") V high(V a) { return _mm512_srli_epi64(a, 32); }
  RNNKERN_DIGEST_OP("avx512f") V mul(V a, V b) { return _mm512_mul_epu32(a, b); }
  RNNKERN_DIGEST_OP("avx512f") V add(V a, V b) { return _mm512_add_epi64(a, b); }
  // Not _mm512_reduce_add_epi64: GCC adds its lanes as signed long long, which overflows (UB).
  RNNKERN_DIGEST_OP("avx512f") std::uint64_t sum(V a) {
    alignas(64) std::uint64_t lanes[8];  // (8,)
    _mm512_store_si512(lanes, a);
    std::uint64_t r = 0;
    for (std::uint64_t x : lanes) r += x;
    return r;
  }
};

template <int S>
__attribute__((target("avx512f"), flatten)) std::size_t sums_avx512(
    const Keys& k, const std::uint32_t* const* w, std::size_t n, std::uint64_t* const* s) {
  const std::uint64_t* key[] = {k.z[0], k.z[1]};
  return sums_vec<Avx512, S>(key, w, n, s);
}
#endif

struct Avx2 {
  using V = __m256i;
  static constexpr std::size_t kWords = 8;
  RNNKERN_DIGEST_OP("avx2") V zero() { return _mm256_setzero_si256(); }
  RNNKERN_DIGEST_OP("avx2") V load(const std::uint64_t* p) {
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
  }
  RNNKERN_DIGEST_OP("avx2") V loadu(const std::uint32_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  RNNKERN_DIGEST_OP("avx2") V high(V a) { return _mm256_srli_epi64(a, 32); }
  RNNKERN_DIGEST_OP("avx2") V mul(V a, V b) { return _mm256_mul_epu32(a, b); }
  RNNKERN_DIGEST_OP("avx2") V add(V a, V b) { return _mm256_add_epi64(a, b); }
  RNNKERN_DIGEST_OP("avx2") std::uint64_t sum(V a) {
    alignas(32) std::uint64_t lanes[4];  // (4,)
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), a);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
  }
};
#undef RNNKERN_DIGEST_OP

template <int S>
__attribute__((target("avx2"), flatten)) std::size_t sums_avx2(
    const Keys& k, const std::uint32_t* const* w, std::size_t n, std::uint64_t* const* s) {
  const std::uint64_t* key[] = {k.y[0], k.y[1]};
  return sums_vec<Avx2, S>(key, w, n, s);
}
#pragma GCC diagnostic pop
#endif

enum Path { SCALAR, AVX2, AVX512 };

// The digest pairs of S blocks: bytes[t] (1..kDigestBlock) bytes at p[t] into s[t][0..1].
template <int S>
void block_digests(Path path, const Keys& k, const unsigned char* const* p,
                   const std::size_t* bytes, std::uint64_t* const* s) {
  alignas(64) std::uint32_t copy[S][kWords];  // (S, kWords): a partial or misaligned block's
  const std::uint32_t* words[S];              // words, zero-padded
  std::size_t m = kWords;  // words with a byte of a block, of the longest block
  for (int t = 0; t < S; ++t) {
    s[t][0] = s[t][1] = 0;
    if (bytes[t] == kDigestBlock && reinterpret_cast<std::uintptr_t>(p[t]) % 4 == 0) {
      words[t] = reinterpret_cast<const std::uint32_t*>(p[t]);
    } else {
      std::memset(copy[t], 0, sizeof copy[t]);
      std::memcpy(copy[t], p[t], bytes[t]);
      words[t] = copy[t];
      if (S == 1) m = (bytes[t] + 3) / 4;
    }
  }
  std::size_t done = 0;
#ifdef RNNKERN_DIGEST_X86
#ifndef RNNKERN_NO_AVX512
  if (path == AVX512) done = sums_avx512<S>(k, words, m, s);
#endif
  if (path == AVX2) done = sums_avx2<S>(k, words, m, s);
#endif
  sums_scalar<S>(k, words, done, m, s);
}

}  // namespace

void digests(int count, const void* const* data, const std::size_t* bytes,
             std::uint64_t* const* out) {
  const Keys& k = keys();
  const std::string name = isa();
  const Path path = name == "avx512" ? AVX512 : name == "avx2" ? AVX2 : SCALAR;
  std::vector<std::size_t> first(count + 1, 0);  // (count + 1,): range j's first global block
  for (int j = 0; j < count; ++j) first[j + 1] = first[j] + digest_size(bytes[j]) / 2;
  const std::size_t blocks = first[count];
  // Parts of 64 blocks (256 KiB) at least: below that a team call costs more than it saves.
  const int parts = static_cast<int>(std::min<std::size_t>(
      std::max(1, get_num_threads()), std::max<std::size_t>(1, blocks / 64)));
  // Block b of all the ranges: its memory, its size and its digest pair.
  auto locate = [&](std::size_t b, const unsigned char** p, std::size_t* n, std::uint64_t** d) {
    const int j =
        static_cast<int>(std::upper_bound(first.begin(), first.end(), b) - first.begin()) - 1;
    const std::size_t at = (b - first[j]) * kDigestBlock;
    *p = static_cast<const unsigned char*>(data[j]) + at;
    *n = std::min(kDigestBlock, bytes[j] - at);
    *d = out[j] + 2 * (b - first[j]);
  };
  // A part's blocks [lo, hi) in kStreams runs read side by side: a core keeps more of memory's
  // misses in flight with several streams than with one.
  auto part = [&](int i) {
    const std::size_t lo = blocks * i / parts, hi = blocks * (i + 1) / parts;
    const std::size_t run = (hi - lo) / kStreams;  // blocks per stream; the rest one by one
    for (std::size_t b = 0; b < run; ++b) {
      const unsigned char* p[kStreams];
      std::size_t n[kStreams];
      std::uint64_t* d[kStreams];
      for (int t = 0; t < kStreams; ++t) locate(lo + t * run + b, &p[t], &n[t], &d[t]);
      block_digests<kStreams>(path, k, p, n, d);
    }
    for (std::size_t b = lo + kStreams * run; b < hi; ++b) {
      const unsigned char* p;
      std::size_t n;
      std::uint64_t* d;
      locate(b, &p, &n, &d);
      block_digests<1>(path, k, &p, &n, &d);
    }
  };
  if (parts == 1) {
    part(0);
  } else {
    concurrently(parts, part);
  }
}

}  // namespace rnnkern
