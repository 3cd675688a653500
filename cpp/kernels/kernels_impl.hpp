// The hot loops of one time step, written once and compiled per ISA: each kernels_<isa>.cpp
// defines RNNKERN_ISA (a name) and RNNKERN_VBYTES (vector bytes) and includes this file.
// Everything here has internal linkage, so no inline function compiled for one ISA can be
// picked by the linker for another.
//
// A "panel product" computes, for every batch row b, acc (NV vectors of NB lanes) =
// sum_k a[b, k] * panel[k, v, :] into a small tile that stays in L1, then hands each row to the
// cell's epilogue (nonlinearities, cell update, stores): gates never make a round trip to memory.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "kernels.hpp"

#ifndef RNNKERN_ISA
#error "define RNNKERN_ISA and RNNKERN_VBYTES before including kernels_impl.hpp"
#endif

// The hot entry points inline everything they call. Not in the sanitized build
// (RNNKERN_SANITIZE): instrumenting the flattened kernels took 9-11 min per ISA on 2 cores
// (1.5 min without); the sanitizers check the same source, inlined as the compiler chooses.
#ifdef RNNKERN_SANITIZE
#define RNNKERN_FLATTEN
#else
#define RNNKERN_FLATTEN [[gnu::flatten]]
#endif

namespace rnnkern {
namespace RNNKERN_ISA {
namespace {

constexpr int VBYTES = RNNKERN_VBYTES;
constexpr int NREGS = VBYTES == 64 ? 32 : 16;  // vector registers of the ISA

template <class F>
struct V;
template <>
struct V<float> {
  typedef float vec __attribute__((vector_size(VBYTES)));
  typedef int32_t ivec __attribute__((vector_size(VBYTES)));
};
template <>
struct V<double> {
  typedef double vec __attribute__((vector_size(VBYTES)));
  typedef int64_t ivec __attribute__((vector_size(VBYTES)));
};

template <class F>
using vec = typename V<F>::vec;
template <class F>
constexpr int64_t NB = VBYTES / sizeof(F);

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

template <class F>
inline vec<F> splat(F s) {
  return vec<F>{} + s;
}
template <class F>
inline vec<F> load(const F* p) {
  vec<F> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class F>
inline void store(F* p, vec<F> v) {
  std::memcpy(p, &v, sizeof v);
}
// The first n lanes (n <= NB) of p, zeros after; and a store of the first n lanes. Masked
// loads and stores where the ISA has them: a partial block (H not a multiple of NB) costs what a
// full one does, not a round trip through the stack and a call to memcpy.
#if defined(__AVX512F__)
constexpr bool MASKED = VBYTES == 64;
inline __mmask16 lanes(int64_t n) { return static_cast<__mmask16>((1u << n) - 1); }
inline vec<float> masked_load(const float* p, int64_t n) {
  return (vec<float>)_mm512_maskz_loadu_ps(lanes(n), p);
}
inline vec<double> masked_load(const double* p, int64_t n) {
  return (vec<double>)_mm512_maskz_loadu_pd(static_cast<__mmask8>(lanes(n)), p);
}
inline void masked_store(float* p, vec<float> v, int64_t n) {
  _mm512_mask_storeu_ps(p, lanes(n), (__m512)v);
}
inline void masked_store(double* p, vec<double> v, int64_t n) {
  _mm512_mask_storeu_pd(p, static_cast<__mmask8>(lanes(n)), (__m512d)v);
}
#elif defined(__AVX2__)
constexpr bool MASKED = VBYTES == 32;
inline __m256i lanes32(int64_t n) {  // lane l < n: all ones
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline __m256i lanes64(int64_t n) {
  return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
}
inline vec<float> masked_load(const float* p, int64_t n) {
  return (vec<float>)_mm256_maskload_ps(p, lanes32(n));
}
inline vec<double> masked_load(const double* p, int64_t n) {
  return (vec<double>)_mm256_maskload_pd(p, lanes64(n));
}
inline void masked_store(float* p, vec<float> v, int64_t n) {
  _mm256_maskstore_ps(p, lanes32(n), (__m256)v);
}
inline void masked_store(double* p, vec<double> v, int64_t n) {
  _mm256_maskstore_pd(p, lanes64(n), (__m256d)v);
}
#else
constexpr bool MASKED = false;
template <class F>
vec<F> masked_load(const F* p, int64_t n);
template <class F>
void masked_store(F* p, vec<F> v, int64_t n);
#endif
template <class F>
inline vec<F> load(const F* p, int64_t n) {
  if (n == NB<F>) return load(p);
  if constexpr (MASKED) {
    return masked_load(p, n);
  } else {
    F tmp[NB<F>] = {};
    std::memcpy(tmp, p, n * sizeof(F));
    return load(tmp);
  }
}
template <class F>
inline void store(F* p, vec<F> v, int64_t n) {
  if (n == NB<F>) return store(p, v);
  if constexpr (MASKED) {
    masked_store(p, v, n);
  } else {
    std::memcpy(p, &v, n * sizeof(F));
  }
}
template <class F>
inline void zero(F* p, int64_t n) {
  std::memset(p, 0, n * sizeof(F));
}

// ---- bf16 panels (W = bf16): the high half of a float's bits, rounded to nearest, ties to
// even; NaN stays NaN. Products read them widened to float (emulated), or with AVX512_BF16
// (the avx512 table of kernels_avx512_lowp.cpp) take them as they are (tile_bf16).

template <class W>
constexpr bool is_bf16 = std::is_same_v<W, bf16>;
typedef bf16 hvec __attribute__((vector_size(VBYTES / 2)));     // NB<float> bf16 lanes
typedef uint32_t uvec __attribute__((vector_size(VBYTES)));    // NB<float> bit patterns

// A panel's vector as F.
template <class F, class W>
inline vec<F> load_w(const W* p) {
  if constexpr (is_bf16<W>) {
    hvec h;
    std::memcpy(&h, p, sizeof h);
    return (vec<F>)(__builtin_convertvector(h, uvec) << 16);
  } else {
    return load(p);
  }
}
// v rounded to bf16, in the high half of each lane (NaN: quieted, its sign and top bits kept).
inline uvec bf16_round(vec<float> v) {
  const uvec u = (uvec)v;
  const uvec nan = (uvec)(v != v);  // all ones where NaN
  const uvec r = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  return (r & ~nan) | ((u | 0x00400000u) & 0xFFFF0000u & nan);
}
// The first n lanes of v into a panel.
template <class F, class W>
inline void store_w(W* p, vec<F> v, int64_t n) {
  if constexpr (is_bf16<W>) {
    const hvec h = __builtin_convertvector(bf16_round(v) >> 16, hvec);
    std::memcpy(p, &h, n * sizeof(W));
  } else {
    store(p, v, n);
  }
}
// bf16 panels hold consecutive k in pairs: element (k, v, l) of a (K, nv, NB) panel sits at
// ((k / 2) * nv + v) * 2NB + 2l + k % 2 for k < K & ~1, so one vector load holds k and k + 1 of
// NB units (the pairs AVX512_BF16's dot products take), and the last k of an odd K at
// (K - 1) * nv * NB + v * NB + l. With nv = 1 a pair starts where the plain layout's k does.
// Stores k (even) and k + 1 of NB units: one 32-bit lane per unit, k in the low half.
inline void store_pair(bf16* p, vec<float> even, vec<float> odd) {
  const uvec u = (bf16_round(even) >> 16) | bf16_round(odd);
  std::memcpy(p, &u, sizeof u);
}

// A scalar operand of a product as the precision takes it: with bf16 panels, rounded to bf16.
template <class W, class F>
inline F operand(F s) {
  if constexpr (is_bf16<W>) {
    if (s != s) return s;
    uint32_t u;
    std::memcpy(&u, &s, sizeof u);
    u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    std::memcpy(&s, &u, sizeof s);
  }
  return s;
}

// ---- vector math: exp, tanh, sigmoid (Cephes-style polynomials; no overflow, NaN propagates)

inline vec<float> vexp(vec<float> x) {
  using iv = V<float>::ivec;
  // above hi the scale 2^n is 2^128 = inf, as exp overflows; below lo, normal numbers only
  const vec<float> hi = splat(89.0f), lo = splat(-87.3365447505531f);
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  const vec<float> magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  vec<float> t = x * 1.44269504088896341f + magic;
  vec<float> n = t - magic;
  iv ni = (iv)t - (iv)magic;
  vec<float> r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vec<float> p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  vec<float> y = p * (r * r) + r + 1.0f;
  iv e = (ni + 127) << 23;
  return y * (vec<float>)e;
}

inline vec<double> vexp(vec<double> x) {
  using iv = V<double>::ivec;
  const vec<double> hi = splat(710.0), lo = splat(-708.0);  // as for float: 2^1024 = inf
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  const vec<double> magic = splat(6755399441055744.0);  // 1.5 * 2^52
  vec<double> t = x * 1.4426950408889634073599 + magic;
  vec<double> n = t - magic;
  iv ni = (iv)t - (iv)magic;
  vec<double> r = x - n * 6.93145751953125e-1;
  r = r - n * 1.42860682030941723212e-6;
  vec<double> xx = r * r;
  vec<double> px = ((1.26177193074810590878e-4 * xx + 3.02994407707441961300e-2) * xx +
                    9.99999999999999999910e-1) *
                   r;
  vec<double> qx = ((3.00198505138664455042e-6 * xx + 2.52448340349684104192e-3) * xx +
                    2.27265548208155028766e-1) *
                       xx +
                   2.00000000000000000009e0;
  vec<double> y = 1.0 + 2.0 * (px / (qx - px));
  iv e = (ni + 1023) << 52;
  return y * (vec<double>)e;
}

// Lane type of a vector type.
template <class Vt>
using lane = std::decay_t<decltype(Vt{}[0])>;

template <class Vt>
inline Vt vabs(Vt x) {
  return x < 0 ? -x : x;
}
template <class Vt>
inline Vt copysign_of(Vt mag, Vt x) {
  return x < 0 ? -mag : mag;
}

inline vec<double> tanh_small(vec<double> x) {  // |x| < 0.625
  vec<double> z = x * x;
  vec<double> p = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z -
                  1.61468768441708447952e3;
  vec<double> q = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z +
                  4.84406305325125486048e3;
  return x + x * z * (p / q);
}
// float: tanh(x) = x P(x^2) / Q(x^2) on [-9, 9] (beyond, tanh rounds to +-1), a rational fit
// made for rnnkern (relative error 7e-9 in exact arithmetic, within 8 ulp in float32; tested in
// tests/test_nonlinearities.py). Odd by construction; NaN passes the clamps.
inline vec<float> vtanh(vec<float> x) {
  x = x > 9.0f ? splat(9.0f) : x;
  x = x < -9.0f ? splat(-9.0f) : x;
  const vec<float> z = x * x;
  vec<float> p = splat(-8.490206286e-14f);
  p = p * z + 5.278534554e-11f;
  p = p * z - 2.022644985e-08f;
  p = p * z + 1.115461146e-05f;
  p = p * z + 3.103985218e-03f;
  p = p * z + 1.308403611e-01f;
  p = p * z + 1.0f;
  vec<float> q = splat(2.546187316e-04f);
  q = q * z + 2.449529432e-02f;
  q = q * z + 4.641736448e-01f;
  q = q * z + 1.0f;
  vec<float> r = x * p / q;
  r = r > 1.0f ? splat(1.0f) : r;
  return r < -1.0f ? splat(-1.0f) : r;
}
// double: from exp, or the small-argument series.
template <class Vt>
inline Vt vtanh(Vt x) {
  using F = lane<Vt>;
  Vt ax = vabs(x);
  Vt e = vexp(ax + ax);
  Vt big = copysign_of(F(1) - F(2) / (e + F(1)), x);
  return ax < F(0.625) ? tanh_small(x) : big;
}
template <class Vt>
inline Vt vsigmoid(Vt x) {
  using F = lane<Vt>;
  return F(1) / (F(1) + vexp(-x));
}
template <class Vt>
inline Vt vrelu(Vt x) {
  return x < 0 ? Vt{} : x;  // NaN stays NaN
}

// ---- the panel product

template <class F, int NV>
constexpr int mb_max() {  // rows per tile: MB*NV accumulators + NV weights + a broadcast
  return (NREGS - NV - 2) / NV < 8 ? (NREGS - NV - 2) / NV : 8;
}
constexpr int k_unroll(int chains) {  // independent accumulator sets to hide FMA latency
  return chains >= 5 ? 1 : (chains >= 3 ? 2 : (chains == 2 ? 4 : 8));
}

// out (MB, NV*NB; rows ldo apart) (+)= a (MB rows of stride lda, K) @ panel (K, NV, NB; rows
// ldp apart, vectors ldv apart), from zero or, with `add`, from out. AT: a is read transposed,
// a[k * lda + m] (rows of the product are columns of a).
template <class F, int MB, int NV, bool AT = false, class W>
inline void tile(const F* a, int64_t lda, const W* panel, int64_t ldp, int64_t K, F* out,
                 int64_t ldo, bool add, int64_t ldv = NB<F>) {
  constexpr int KU = k_unroll(MB * NV);
  vec<F> acc[KU][MB][NV];
#pragma GCC unroll 8
  for (int u = 0; u < KU; ++u)
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        acc[u][m][v] = u == 0 && add ? load(out + m * ldo + v * NB<F>) : vec<F>{};
  int64_t k = 0;
  for (; k + KU <= K; k += KU) {
#pragma GCC unroll 8
    for (int u = 0; u < KU; ++u) {
      const W* wk = panel + (k + u) * ldp;
      vec<F> w[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) w[v] = load_w<F>(wk + v * ldv);
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) {
        const F s = AT ? a[(k + u) * lda + m] : a[m * lda + k + u];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[u][m][v] += w[v] * s;
      }
    }
  }
  for (; k < K; ++k) {
    const W* wk = panel + k * ldp;
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      const F s = AT ? a[k * lda + m] : a[m * lda + k];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[0][m][v] += load_w<F>(wk + v * ldv) * s;
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      vec<F> sum = acc[0][m][v];
#pragma GCC unroll 8
      for (int u = 1; u < KU; ++u) sum += acc[u][m][v];
      store(out + m * ldo + v * NB<F>, sum);
    }
}

// Whether this table's bf16 products take vdpbf16ps (avx512 with AVX512_BF16).
#if defined(__AVX512BF16__)
constexpr bool kNativeBf16 = VBYTES == 64;
#else
constexpr bool kNativeBf16 = false;
#endif

// out (MB, NV*NB) = a (MB rows of stride lda, K; bf16 values) @ a bf16 panel (K, NV, NB) in
// pairs of k (see store_pair): one load gives k and k + 1 (a shift and a mask widen them), so
// the panel's bytes are half of float's and the widening costs one ALU operation per vector;
// with AVX512_BF16 one vdpbf16ps per vector takes the pair as it is. AT: a is read transposed,
// row m's k at a[k * lda + m]; with vdpbf16ps a is then bf16_pair_rows' (pair q of row m at
// a[q * lda + m], an odd K's last k at a[(K / 2) * lda + m]).
// The panel's vectors: pair q's vector v at panel + q * ps + v * vs, an odd K's last k's at
// panel + (K / 2) * ps + v * ts (defaults: an NV-gate panel; product() passes NV adjacent
// blocks' panels). ONE: one chain of sums per output whatever the tile's shape (KU = 1), so
// that grouping blocks into tiles does not change the bits.
template <int MB, int NV, bool AT = false, bool ONE = false>
inline void tile_bf16(const float* a, int64_t lda, const bf16* panel, int64_t K, float* out,
                      int64_t ps = NV * 2 * NB<float>, int64_t vs = 2 * NB<float>,
                      int64_t ts = NB<float>) {
  constexpr int KU = ONE ? 1 : k_unroll(MB * NV);  // accumulator sets: k goes to set k % KU
  constexpr int PU = KU >= 2 ? KU / 2 : 1;  // pairs per iteration
  constexpr int64_t NBF = NB<float>;
  const uvec high = uvec{} + 0xFFFF0000u;
  vec<float> acc[KU][MB][NV];
#pragma GCC unroll 8
  for (int u = 0; u < KU; ++u)
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[u][m][v] = vec<float>{};
  const int64_t Kp = K & ~int64_t(1);
#if defined(__AVX512BF16__)
  if constexpr (kNativeBf16) {  // AVX512_BF16: vdpbf16ps adds a pair of k's products per lane
    // acc += a[k + 1] w[k + 1], then += a[k] w[k], each rounded (the products are exact in
    // float); bf16 denormals are read as zero (docs/precision.md). Without AT a's rows (bf16
    // values) are first packed as pairs, KC k at a time, so that a pair is one broadcast. Pair
    // p of a run goes to accumulator set p % KU.
    // Pair q (of the whole K) times the panel into set s; pair(m): row m's pair, 32 bits.
    auto dpair = [&](int64_t q, int s, auto&& pair) {
      const bf16* pk = panel + q * ps;  // pair q's NV vectors, vs apart
      __m512bh w[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        w[v] = (__m512bh)_mm512_loadu_si512(static_cast<const void*>(pk + v * vs));
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) {
        const __m512bh b = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair(m)));
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
          acc[s][m][v] = (vec<float>)_mm512_dpbf16_ps((__m512)acc[s][m][v], b, w[v]);
      }
    };
    // Pairs [q0, q1) with pair_at(q, m) giving row m's pair q.
    auto run = [&](int64_t q0, int64_t q1, auto&& pair_at) {
      int64_t q = q0;
      for (; q + KU <= q1; q += KU)
#pragma GCC unroll 8
        for (int u = 0; u < KU; ++u) dpair(q + u, u, [&](int m) { return pair_at(q + u, m); });
      for (; q < q1; ++q) dpair(q, 0, [&](int m) { return pair_at(q, m); });
    };
    if constexpr (AT) {
      run(0, Kp / 2, [&](int64_t q, int m) {
        uint32_t p;
        std::memcpy(&p, a + q * lda + m, 4);
        return p;
      });
    } else {
      constexpr int64_t KC = 512;
      alignas(64) uint32_t ap[MB][KC / 2];  // (MB, KC/2) a's pairs of the chunk
      for (int64_t k0 = 0; k0 < Kp; k0 += KC) {
        const int64_t kn = imin(KC, Kp - k0);  // even
#pragma GCC unroll 8
        for (int m = 0; m < MB; ++m) {
          const float* r = a + m * lda + k0;
          int64_t k = 0;
          for (; k + 32 <= kn; k += 32)  // exact: the values are bf16 already
            _mm512_store_si512(static_cast<void*>(ap[m] + k / 2),
                               (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(r + k + 16),
                                                            _mm512_loadu_ps(r + k)));
          for (; k < kn; k += 2) {
            uint32_t lo, hi;
            std::memcpy(&lo, r + k, 4);
            std::memcpy(&hi, r + k + 1, 4);
            ap[m][k / 2] = (lo >> 16) | (hi & 0xFFFF0000u);
          }
        }
        run(k0 / 2, (k0 + kn) / 2, [&](int64_t q, int m) { return ap[m][q - k0 / 2]; });
      }
    }
  } else
#endif
  {
  auto pair = [&](int64_t k, int se, int so) {  // k even: k into set se, k + 1 into so
    const bf16* pk = panel + (k / 2) * ps;  // pair k / 2's NV vectors, vs apart
    float s0[MB], s1[MB];
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m)
      s0[m] = AT ? a[k * lda + m] : a[m * lda + k],
      s1[m] = AT ? a[(k + 1) * lda + m] : a[m * lda + k + 1];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      uvec u;
      std::memcpy(&u, pk + v * vs, sizeof u);
      const vec<float> we = (vec<float>)(u << 16), wo = (vec<float>)(u & high);
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) {
        acc[se][m][v] += we * s0[m];
        acc[so][m][v] += wo * s1[m];
      }
    }
  };
  int64_t k = 0;
  for (; k + 2 * PU <= Kp; k += 2 * PU)
#pragma GCC unroll 4
    for (int q = 0; q < PU; ++q) pair(k + 2 * q, (2 * q) % KU, (2 * q + 1) % KU);
  for (; k < Kp; k += 2) pair(k, 0, 1 % KU);
  }
  if (K & 1) {  // the last k, stored plain
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      const float s = AT ? a[(kNativeBf16 ? Kp / 2 : K - 1) * lda + m] : a[m * lda + K - 1];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[0][m][v] += load_w<float>(panel + (Kp / 2) * ps + v * ts) * s;
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      vec<float> sum = acc[0][m][v];
#pragma GCC unroll 8
      for (int u = 1; u < KU; ++u) sum += acc[u][m][v];
      store(out + m * NV * NBF + v * NBF, sum);
    }
}

// rows (rows, K) of a (lda apart) rounded to bf16 into out (rows, K).
inline void bf16_round_rows(const float* a, int64_t lda, int64_t rows, int64_t K, float* out) {
  for (int64_t m = 0; m < rows; ++m) {
    float* o = out + m * K;
    const float* r = a + m * lda;
    int64_t k = 0;
    for (; k + NB<float> <= K; k += NB<float>) store(o + k, (vec<float>)bf16_round(load(r + k)));
    for (; k < K; ++k) o[k] = operand<bf16>(r[k]);
  }
}

// Rows 2q and 2q + 1 of a (K rows of n, lda apart) rounded to bf16 and paired lane by lane (row
// 2q in the low half) into out (K/2, n) of 32-bit pairs, then an odd K's last row's bf16 values
// (n): the transposed operand of vdpbf16ps tiles (tile_bf16 with AT).
inline void bf16_pair_rows(const float* a, int64_t lda, int64_t K, int64_t n, float* out) {
  auto bits = [](float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
  };
  for (int64_t q = 0; q < K / 2; ++q) {
    const float *r0 = a + 2 * q * lda, *r1 = r0 + lda;
    float* o = out + q * n;
    int64_t j = 0;
    for (; j + NB<float> <= n; j += NB<float>) {
      const uvec u = (bf16_round(load(r0 + j)) >> 16) | bf16_round(load(r1 + j));
      std::memcpy(o + j, &u, sizeof u);
    }
    for (; j < n; ++j) {
      const uint32_t u = (bits(operand<bf16>(r0[j])) >> 16) | bits(operand<bf16>(r1[j]));
      std::memcpy(o + j, &u, 4);
    }
  }
  if (K & 1) bf16_round_rows(a + (K - 1) * lda, lda, 1, n, out + (K / 2) * n);
}

// Rows [b, b + M) of a (K columns; with AT, columns of a (K, lda)) rounded to bf16, as a (M, K)
// block in this thread's scratch.
template <int M, bool AT>
inline const float* bf16_rows(const float* a, int64_t lda, int64_t b, int64_t K) {
  thread_local std::vector<float> q;  // (M, K)
  if (q.size() < static_cast<size_t>(M * K)) q.resize(M * K);
  float* out = q.data();
  if constexpr (AT) {
    for (int m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) out[m * K + k] = operand<bf16>(a[k * lda + b + m]);
  } else {
    bf16_round_rows(a + b * lda, lda, M, K, out);
  }
  return out;
}
template <int M, bool AT>
inline const double* bf16_rows(const double*, int64_t, int64_t, int64_t);  // never: bf16 is float

// Rows of tile i when B rows are cut into `tiles` tiles of near-equal rows (8 rows in 2 tiles:
// 4 + 4, not 6 + 2), so no tile is too thin to keep the FMA units busy.
inline int64_t tile_rows(int64_t B, int64_t tiles, int64_t i) {
  return B / tiles + (i < B % tiles ? 1 : 0);
}

// One tile of `rows` (1..M) rows from b: the product, then the epilogue of each row. With bf16
// panels a is rounded here, once per tile, unless `rounded` (operand_rows did it).
template <class F, int NV, int M, bool AT, class W, class Epi>
inline void rows_tile(const F* a, int64_t lda, int64_t b, int64_t rows, const W* panel, int64_t K,
                      F* buf, Epi& epi, bool rounded) {
  if constexpr (M > 0) {
    if (rows == M) {
      if constexpr (is_bf16<W>) {  // the tile's rows rounded once, not at every broadcast
        if (rounded) tile_bf16<M, NV, AT>(AT ? a + b : a + b * lda, lda, panel, K, buf);
        else tile_bf16<M, NV>(bf16_rows<M, AT>(a, lda, b, K), K, panel, K, buf);
      } else {
        constexpr int64_t WS = NV * NB<F>;
        tile<F, M, NV, AT>(AT ? a + b : a + b * lda, lda, panel, WS, K, buf, WS, false);
      }
      for (int m = 0; m < M; ++m) epi(b + m, static_cast<const F*>(buf + m * NV * NB<F>));
    } else {
      rows_tile<F, NV, M - 1, AT>(a, lda, b, rows, panel, K, buf, epi, rounded);
    }
  }
}

// Whether panel_rows cuts an NV-gate panel into sub-panels of SUB gates and slices of K: with 16
// vector registers (AVX2) a 4-gate tile holds 2 rows, so each further 2 rows would stream the
// whole panel (32 KB of float at H = 256: all of L1) from L2 again; 2-gate tiles hold 6 rows and
// a slice of the panel stays in L1 while every row tile passes over it.
template <class F, int NV, class W>
constexpr bool sliced() {  // float panels (bf16 ones are in pairs of k)
  return VBYTES == 32 && NV == 4 && std::is_same_v<W, F>;
}
constexpr int SUB = 2;

// One SUB-gate tile of `rows` (1..M) rows: out (rows, SUB*NB; ldp apart) (+)= a @ the sub-panel.
template <class F, int M, bool AT, class W>
inline void sub_tile(const F* a, int64_t lda, int64_t rows, const W* panel, int64_t ldp,
                     int64_t K, F* out, bool add) {
  if constexpr (M > 0) {
    if (rows == M) tile<F, M, SUB, AT>(a, lda, panel, ldp, K, out, ldp, add);
    else sub_tile<F, M - 1, AT>(a, lda, rows, panel, ldp, K, out, add);
  }
}

// panel_rows' sliced product for more rows than one NV-gate tile holds: per group of RB rows,
// per slice of KC of K (8 KB of the panel), per sub-panel, every row tile adds its part to buf;
// then the epilogue of each row. Not inlined: its loops keep their registers to themselves.
template <class F, int NV, bool AT, class W, class Epi>
[[gnu::noinline]] void panel_rows_sliced(const F* a, int64_t lda, int64_t B, const W* panel,
                                         int64_t K, Epi& epi) {
  constexpr int MB = mb_max<F, SUB>();
  constexpr int64_t WS = NV * NB<F>, RB = 64, KC = 8192 / (WS * sizeof(F));
  alignas(64) F buf[RB * WS];  // (RB, NV*NB) the group's products
  for (int64_t r0 = 0; r0 < B; r0 += RB) {
    const int64_t nr = imin(RB, B - r0), tiles = (nr + MB - 1) / MB;
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
      const int64_t kc = imin(KC, K - k0);
      const F* ak = AT ? a + k0 * lda + r0 : a + r0 * lda + k0;  // (nr, kc) of a
      for (int v0 = 0; v0 < NV; v0 += SUB)
        for (int64_t i = 0, b = 0, rows; i < tiles; ++i, b += rows) {
          rows = tile_rows(nr, tiles, i);
          sub_tile<F, MB, AT>(AT ? ak + b : ak + b * lda, lda, rows, panel + k0 * WS + v0 * NB<F>,
                              WS, kc, buf + b * WS + v0 * NB<F>, k0 > 0);
        }
    }
    for (int64_t b = 0; b < nr; ++b) epi(r0 + b, static_cast<const F*>(buf + b * WS));
  }
}

// For every row b < B: epi(b, acc) with acc (NV*NB) = a[b, :K] @ panel; a null = zero product.
// bf16 panels: a is rounded per tile, unless `rounded`.
template <class F, int NV, bool AT = false, class W, class Epi>
inline void panel_rows(const F* a, int64_t lda, int64_t B, const W* panel, int64_t K, Epi&& epi,
                       bool rounded = false) {
  constexpr int MB = mb_max<F, NV>();
  alignas(64) F buf[MB * NV * NB<F>];
  if (a == nullptr) {
    zero(buf, NV * NB<F>);
    for (int64_t b = 0; b < B; ++b) epi(b, static_cast<const F*>(buf));
    return;
  }
  if constexpr (sliced<F, NV, W>())
    if (B > MB) return panel_rows_sliced<F, NV, AT>(a, lda, B, panel, K, epi);
  const int64_t tiles = (B + MB - 1) / MB;
  for (int64_t i = 0, b = 0, rows; i < tiles; ++i, b += rows) {
    rows = tile_rows(B, tiles, i);
    rows_tile<F, NV, MB, AT>(a, lda, b, rows, panel, K, buf, epi, rounded);
  }
}

// ---- int8 (W = int8_t, inference): weight rows symmetric in 7 bits (INT8_WMAX) with a float
// scale each, the other operand's rows u8 with a zero point; products are exact s32 sums.

template <class W>
constexpr bool is_s8 = std::is_same_v<W, int8_t>;
using ivec = V<float>::ivec;  // NB<float> int32 lanes

// Over r[0, K): lo = min(0, min r), hi = max(0, max r); false if r has a NaN or an infinity.
inline bool row_range(const float* r, int64_t K, float* lo, float* hi) {
  vec<float> vlo{}, vhi{};
  ivec bad{};
  int64_t k = 0;
  for (; k + NB<float> <= K; k += NB<float>) {
    const vec<float> v = load(r + k);
    vlo = v < vlo ? v : vlo, vhi = v > vhi ? v : vhi;
    bad |= (ivec)(!(vabs(v) <= 3.40282347e38f));
  }
  float l = 0, h = 0;
  bool finite = true;
  for (int i = 0; i < NB<float>; ++i)
    l = vlo[i] < l ? vlo[i] : l, h = vhi[i] > h ? vhi[i] : h, finite = finite && !bad[i];
  for (; k < K; ++k) {
    l = r[k] < l ? r[k] : l, h = r[k] > h ? r[k] : h;
    finite = finite && std::fabs(r[k]) <= 3.40282347e38f;
  }
  *lo = l, *hi = h;
  return finite;
}

// q[k] = clamp(rint(r[k] * inv) + z, qlo, qhi) for k < K, rint to nearest, ties to even (as
// NumPy's rint: rnnkern.reference quantizes with the same float32 operations).
template <class Q>
inline void quantize(const float* r, int64_t K, float inv, int32_t z, int32_t qlo, int32_t qhi,
                     Q* q) {
  int64_t k = 0;
#if defined(__AVX2__)
  const __m256 vi = _mm256_set1_ps(inv);
  const __m256i vz = _mm256_set1_epi32(z), vlo = _mm256_set1_epi32(qlo),
                vhi = _mm256_set1_epi32(qhi);
  for (; k + 8 <= K; k += 8) {
    __m256i i = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(r + k), vi)), vz);
    i = _mm256_min_epi32(_mm256_max_epi32(i, vlo), vhi);  // in range: the packs below are exact
    const __m256i p = _mm256_packs_epi32(i, i);          // s16, per 128-bit lane
    const __m256i b = std::is_signed_v<Q> ? _mm256_packs_epi16(p, p) : _mm256_packus_epi16(p, p);
    const int32_t q0 = _mm_cvtsi128_si32(_mm256_castsi256_si128(b)),
                  q1 = _mm_cvtsi128_si32(_mm256_extracti128_si256(b, 1));
    std::memcpy(q + k, &q0, 4), std::memcpy(q + k + 4, &q1, 4);
  }
#endif
  for (; k < K; ++k) {
    const float p = r[k] * inv;
    const int32_t i = static_cast<int32_t>(std::nearbyint(p)) + z;
    q[k] = static_cast<Q>(i < qlo ? qlo : (i > qhi ? qhi : i));
  }
}

// Row r (K) of an activation as the int8 products take it: q (Kp = K rounded up to 4, zeros
// after K) = clamp(rint(r * inv) + zp, 0, 255) with range = hi - lo (row_range), inv = 255 /
// range, scale = range / 255, zp = clamp(rint(-lo * inv), 0, 255); value ~ (q - zp) * scale.
// A zero row: scale 0, q = zp = 0; a row with NaN or infinity: scale NaN (its products are NaN).
inline void quantize_row(const float* r, int64_t K, int64_t Kp, uint8_t* q, float* scale,
                         int32_t* zp) {
  float lo, hi;
  const bool finite = row_range(r, K, &lo, &hi);
  const float range = hi - lo;
  if (!finite || range == 0) {
    std::memset(q, 0, Kp);
    *scale = finite ? 0.0f : __builtin_nanf(""), *zp = 0;
    return;
  }
  const float inv = 255.0f / range, pz = -lo * inv;
  const int32_t z = static_cast<int32_t>(std::nearbyint(pz));
  *scale = range / 255.0f, *zp = z < 0 ? 0 : (z > 255 ? 255 : z);
  quantize(r, K, inv, *zp, 0, 255, q);
  std::memset(q + K, 0, Kp - K);
}

// The other operand of a phase's products (rows of K), as its precision takes it, made once per
// phase by operand_rows: float: the rows themselves; bf16: a copy rounded to bf16.
template <class F, class W>
struct Rows {
  const F* a;  // (rows, lda) or null: a zero product
  int64_t lda;
  Rows from(int64_t r) const { return {a ? a + r * lda : a, lda}; }
};
// int8: the rows quantized (quantize_row).
template <>
struct Rows<float, int8_t> {
  const uint8_t* q;  // (rows, ldq), ldq = K rounded up to 4, or null: a zero product
  int64_t ldq;
  const float* scale;  // (rows,)
  const int32_t* zp;   // (rows,)
  Rows from(int64_t r) const { return {q ? q + r * ldq : q, ldq, scale + r, zp + r}; }
};

// a (rows, K; lda apart, or null) as W's products take it: once per phase (or chunk of x) on
// each thread, not once per hidden block. The copy is this thread's, valid until its next call.
template <class F, class W>
inline Rows<F, W> operand_rows(const F* a, int64_t lda, int64_t rows, int64_t K) {
  if constexpr (is_bf16<W>) {
    thread_local std::vector<float> buf;  // (rows, K)
    if (!a) return {nullptr, K};
    if (buf.size() < static_cast<size_t>(rows * K)) buf.resize(rows * K);
    bf16_round_rows(a, lda, rows, K, buf.data());
    return {buf.data(), K};
  } else if constexpr (is_s8<W>) {
    thread_local std::vector<uint8_t> q;  // (rows, Kp)
    thread_local std::vector<float> scale;  // (rows,)
    thread_local std::vector<int32_t> zp;  // (rows,)
    const int64_t Kp = (K + 3) / 4 * 4;
    if (scale.size() < static_cast<size_t>(rows)) scale.resize(rows), zp.resize(rows);
    if (!a || K == 0) return {nullptr, Kp, scale.data(), zp.data()};
    if (q.size() < static_cast<size_t>(rows * Kp)) q.resize(rows * Kp);
    for (int64_t r = 0; r < rows; ++r)
      quantize_row(a + r * lda, K, Kp, q.data() + r * Kp, &scale[r], &zp[r]);
    return {q.data(), Kp, scale.data(), zp.data()};
  } else {
    (void)rows, (void)K;
    return {a, lda};
  }
}

// Block jb's panel of panels (K, nv, NB) laid out panel_elems apart.
template <class F, class W>
inline const W* block(const W* panels, int64_t jb, int64_t K, int nv) {
  return panels + jb * panel_elems<W>(K, nv, NB<F>);
}

template <int NV>
constexpr int mb_s8() {  // rows per int8 tile: MB*NV accumulators + NV weights + 3
  return (NREGS - NV - 3) / NV < 8 ? (NREGS - NV - 3) / NV : 8;
}

// The vector operations of tile_s8, per ISA: V holds 4 k of NB units in 32-bit lanes; dot adds
// the 4 u8 x s8 products of each lane to acc. AVX2: vpmaddubsw (u8 x s8, pairs summed to s16: at
// most 2 * 255 * 63, no saturation), vpmaddwd with ones (to s32), vpaddd; AVX512_VNNI: vpdpbusd.
#if defined(__AVX2__)
struct S8Avx2 {
  using V = __m256i;
  static V zero() { return _mm256_setzero_si256(); }
  static V load(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const V*>(p)); }
  static V broadcast(int32_t s) { return _mm256_set1_epi32(s); }
  static V dot(V acc, V b, V w) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(b, w),
                                                   _mm256_set1_epi16(1)));
  }
  static void store(int32_t* p, V v) { _mm256_storeu_si256(reinterpret_cast<V*>(p), v); }
};
#endif
#if defined(__AVX512VNNI__)
struct S8Avx512Vnni {
  using V = __m512i;
  static V zero() { return _mm512_setzero_si512(); }
  static V load(const int8_t* p) { return _mm512_loadu_si512(static_cast<const void*>(p)); }
  static V broadcast(int32_t s) { return _mm512_set1_epi32(s); }
  static V dot(V acc, V b, V w) { return _mm512_dpbusd_epi32(acc, b, w); }
  static void store(int32_t* p, V v) { _mm512_storeu_si512(static_cast<void*>(p), v); }
};
#endif

// tile_s8 with the vector operations of Ops (N units per vector: one 32-bit lane each).
template <class Ops, int MB, int NV>
inline void tile_s8_vec(const uint8_t* a, int64_t lda, const int8_t* panel, int64_t KQ,
                        int32_t* out) {
  using V = typename Ops::V;
  constexpr int64_t N = sizeof(V) / sizeof(int32_t);
  V acc[MB][NV];  // (MB, NV) vectors of N s32 sums
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[m][v] = Ops::zero();
  for (int64_t kq = 0; kq < KQ; ++kq) {
    const int8_t* pk = panel + kq * NV * 4 * N;
    V w[NV];  // 4 k of the panel's NV * N units
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) w[v] = Ops::load(pk + v * 4 * N);
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      int32_t s;
      std::memcpy(&s, a + m * lda + 4 * kq, 4);
      const V b = Ops::broadcast(s);  // row m's 4 k in every lane
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[m][v] = Ops::dot(acc[m][v], b, w[v]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) Ops::store(out + (m * NV + v) * N, acc[m][v]);
}

// out (MB, NV*NB) s32 = sum over k of a (MB rows, lda apart; u8, KQ groups of 4 k) times an int8
// panel in groups of 4 k: element (k, v, l) at ((k / 4) * NV + v) * 4NB + 4l + k % 4, so that a
// 32-bit lane holds 4 k of one unit. AVX2 and AVX512_VNNI: tile_s8_vec; elsewhere the same sums
// in int32. Exact integer sums: the same bits on every path.
template <int MB, int NV>
inline void tile_s8(const uint8_t* a, int64_t lda, const int8_t* panel, int64_t KQ, int32_t* out) {
  constexpr int64_t N = NB<float>;
#if defined(__AVX2__)
  if constexpr (N == 8) return tile_s8_vec<S8Avx2, MB, NV>(a, lda, panel, KQ, out);
#endif
#if defined(__AVX512VNNI__)
  if constexpr (N == 16) return tile_s8_vec<S8Avx512Vnni, MB, NV>(a, lda, panel, KQ, out);
#endif
  std::memset(out, 0, MB * NV * N * sizeof(int32_t));
  for (int64_t kq = 0; kq < KQ; ++kq) {
    const int8_t* pk = panel + kq * NV * 4 * N;
    for (int m = 0; m < MB; ++m) {
      const uint8_t* am = a + m * lda + 4 * kq;
      for (int v = 0; v < NV; ++v)
        for (int64_t l = 0; l < N; ++l) {
          const int8_t* w = pk + (v * N + l) * 4;
          out[(m * NV + v) * N + l] += am[0] * w[0] + am[1] * w[1] + am[2] * w[2] + am[3] * w[3];
        }
    }
  }
}

template <int NV, int M>
inline void rows_tile_s8(const uint8_t* a, int64_t lda, int64_t rows, const int8_t* panel,
                         int64_t KQ, int32_t* out) {
  if constexpr (M > 0) {
    if (rows == M) tile_s8<M, NV>(a, lda, panel, KQ, out);
    else rows_tile_s8<NV, M - 1>(a, lda, rows, panel, KQ, out);
  }
}

// panel_rows of a prepared operand (operand_rows): float and bf16 as above (bf16 rows already
// rounded); int8: acc = (sum (q - zp) q_w) * (scale * the unit's scale), the s32 sum exact.
template <class F, int NV, class W, class Epi>
inline void panel_rows(const Rows<F, W>& a, int64_t B, const W* panel, int64_t K, Epi&& epi) {
  if constexpr (!is_s8<W>) {
    panel_rows<F, NV>(a.a, a.lda, B, panel, K, epi, true);
  } else {
    constexpr int64_t N = NB<float>;
    constexpr int MB = mb_s8<NV>();
    alignas(64) float buf[NV * N];       // (NV, NB) one row's products
    alignas(64) int32_t acc[MB * NV * N];  // (MB, NV, NB) a tile's sums
    if (a.q == nullptr) {
      zero(buf, NV * N);
      for (int64_t b = 0; b < B; ++b) epi(b, static_cast<const float*>(buf));
      return;
    }
    const int64_t KQ = a.ldq / 4;
    const int8_t* sw = panel + KQ * 4 * NV * N;  // (NV, NB) float: the units' scales
    const int8_t* ws = sw + NV * N * 4;          // (NV, NB) int32: their rows' sums of q
    const int64_t tiles = (B + MB - 1) / MB;
    for (int64_t i = 0, b = 0, rows; i < tiles; ++i, b += rows) {
      rows = tile_rows(B, tiles, i);
      rows_tile_s8<NV, MB>(a.q + b * a.ldq, a.ldq, rows, panel, KQ, acc);
      for (int64_t m = 0; m < rows; ++m) {
        const ivec zp = ivec{} + a.zp[b + m];
        const float sa = a.scale[b + m];
        for (int v = 0; v < NV; ++v) {
          ivec d, wsum;
          vec<float> swv;
          std::memcpy(&d, acc + (m * NV + v) * N, sizeof d);
          std::memcpy(&wsum, ws + v * N * 4, sizeof wsum);
          std::memcpy(&swv, sw + v * N * 4, sizeof swv);
          store(buf + v * N, __builtin_convertvector(d - zp * wsum, vec<float>) * (swv * sa));
        }
        epi(b + m, static_cast<const float*>(buf));
      }
    }
  }
}

// Forward panels of int8: each unit's row of w (K) quantized (INT8_WMAX) into the groups of 4 k
// of tile_s8, then the units' scales and sums of q (see panel_elems). Units past H: zeros.
inline void pack_forward_s8(int8_t* dst, const float* w, int64_t H, int64_t ldw, int gate0,
                            int nv, int64_t jb0, int64_t jb1) {
  constexpr int64_t N = NB<float>;
  const int64_t K = ldw, KQ = (K + 3) / 4;
  if (K == 0) return;
  std::vector<int8_t> q(KQ * 4, 0);  // (KQ * 4) one row quantized
  for (int64_t jb = jb0; jb < jb1; ++jb) {
    int8_t* panel = dst + jb * panel_elems<int8_t>(K, nv, N);
    std::memset(panel, 0, panel_elems<int8_t>(K, nv, N));
    int8_t* sw = panel + KQ * 4 * nv * N;  // (nv, NB) float
    int8_t* ws = sw + nv * N * 4;          // (nv, NB) int32
    const int64_t nj = imin(N, H - jb * N);
    for (int v = 0; v < nv; ++v)
      for (int64_t l = 0; l < nj; ++l) {
        const float* row = w + ((gate0 + v) * H + jb * N + l) * ldw;  // (K,)
        float lo, hi, scale = 0.0f;
        int32_t sum = 0;
        const bool finite = row_range(row, K, &lo, &hi);
        const float m = hi > -lo ? hi : -lo;
        if (!finite) {
          scale = __builtin_nanf("");
        } else if (m > 0) {
          scale = m / static_cast<float>(INT8_WMAX);
          quantize(row, K, static_cast<float>(INT8_WMAX) / m, 0, -INT8_WMAX, INT8_WMAX, q.data());
          for (int64_t k = 0; k < K; ++k) sum += q[k];
          for (int64_t kq = 0; kq < KQ; ++kq)
            std::memcpy(panel + ((kq * nv + v) * N + l) * 4, q.data() + kq * 4, 4);
        }
        std::memcpy(sw + (v * N + l) * 4, &scale, 4);
        std::memcpy(ws + (v * N + l) * 4, &sum, 4);
      }
  }
}

// ---- packing

// An NB x NB transpose in registers: log2(NB) rounds, each swapping the off-diagonal W x W
// blocks of every 2W x 2W block (rows i, i + W; lanes with bit W set in row i go to row i + W).
template <class F, int W>
inline void swap_blocks(vec<F>& a, vec<F>& b) {
  typename V<F>::ivec lo, hi;  // lane l of a: a[l] or b[l - W]; of b: a[l + W] or b[l]
#pragma GCC unroll 16
  for (int l = 0; l < NB<F>; ++l) {
    lo[l] = (l & W) ? NB<F> + l - W : l;
    hi[l] = (l & W) ? NB<F> + l : l + W;
  }
  const vec<F> na = __builtin_shuffle(a, b, lo), nb = __builtin_shuffle(a, b, hi);
  a = na, b = nb;
}
template <class F, int W = NB<F> / 2>
inline void transpose(vec<F> (&r)[NB<F>]) {
  if constexpr (W >= 1) {
#pragma GCC unroll 16
    for (int i = 0; i < NB<F>; ++i)
      if ((i & W) == 0) swap_blocks<F, W>(r[i], r[i + W]);
    transpose<F, W / 2>(r);
  }
}

template <class F, class W>
void pack_forward_float(W* dst, const F* w, int64_t H, int64_t ldw, int gate0, int nv,
                        int64_t jb0, int64_t jb1) {
  // NB x NB tiles transposed in registers; the NB rows of one gate are read side by side, so
  // the loads form NB streams that the hardware prefetches.
  const int64_t K = ldw;
  for (int64_t jb = jb0; jb < jb1; ++jb) {
    W* panel = dst + jb * nv * K * NB<F>;  // (K, nv, NB)
    const int64_t nj = imin(NB<F>, H - jb * NB<F>);
    for (int v = 0; v < nv; ++v) {
      const F* rows = w + ((gate0 + v) * H + jb * NB<F>) * ldw;  // (nj, ldw)
      for (int64_t k0 = 0; k0 < K; k0 += NB<F>) {
        const int64_t nk = imin(NB<F>, K - k0);
        vec<F> r[NB<F>];  // r[l] = w[unit l, k0 ...]; after the transpose r[kk] = w[..., k0 + kk]
#pragma GCC unroll 16
        for (int64_t l = 0; l < NB<F>; ++l) r[l] = l < nj ? load(rows + l * ldw + k0, nk) : vec<F>{};
        transpose<F>(r);
        if constexpr (is_bf16<W>) {
          for (int64_t kk = 0; kk < nk; kk += 2) {  // k0 is even: pairs stay in the chunk
            const int64_t k = k0 + kk;
            if (kk + 1 < nk) store_pair(panel + ((k / 2) * nv + v) * 2 * NB<F>, r[kk], r[kk + 1]);
            else store_w<F>(panel + (k * nv + v) * NB<F>, r[kk], NB<F>);  // the last k, K odd
          }
        } else {
          for (int64_t kk = 0; kk < nk; ++kk)
            store_w<F>(panel + ((k0 + kk) * nv + v) * NB<F>, r[kk], NB<F>);
        }
      }
    }
  }
}

template <class F, class W>
void pack_forward(W* dst, const F* w, int64_t H, int64_t ldw, int gate0, int nv, int64_t jb0,
                  int64_t jb1) {
  if constexpr (is_s8<W>) {
    return pack_forward_s8(dst, w, H, ldw, gate0, nv, jb0, jb1);
  } else {
    pack_forward_float(dst, w, H, ldw, gate0, nv, jb0, jb1);
  }
}

template <class F, class W>
void pack_backward(W* dst, const F* w, int64_t rows, int64_t cols, int64_t ldw, int64_t row0,
                   int64_t jb0, int64_t jb1) {
  for (int64_t jb = jb0; jb < jb1; ++jb) {
    W* panel = dst + jb * rows * NB<F>;  // (rows, NB)
    const int64_t nj = imin(NB<F>, cols - jb * NB<F>);
    auto row = [&](int64_t r) { return load(w + (row0 + r) * ldw + jb * NB<F>, nj); };
    if constexpr (is_bf16<W>) {
      int64_t r = 0;
      for (; r + 1 < rows; r += 2) store_pair(panel + r * NB<F>, row(r), row(r + 1));
      if (r < rows) store_w<F>(panel + r * NB<F>, row(r), NB<F>);
    } else {
      for (int64_t r = 0; r < rows; ++r) store_w<F>(panel + r * NB<F>, row(r), NB<F>);
    }
  }
}

template <class F, class W>
void zero_row(W* panels, int64_t rows, int64_t q, int64_t jb0, int64_t jb1) {
  for (int64_t jb = jb0; jb < jb1; ++jb) {
    W* panel = panels + jb * rows * NB<F>;  // (rows, NB)
    if (is_bf16<W> && (q | 1) < rows) {  // in a pair: every other element of two rows
      for (int64_t l = 0; l < NB<F>; ++l) panel[(q & ~int64_t(1)) * NB<F> + 2 * l + (q & 1)] = 0;
    } else {
      std::memset(panel + q * NB<F>, 0, NB<F> * sizeof(W));
    }
  }
}

// Whether product() takes two column blocks per tile: with 16 vector registers (AVX2) a
// one-block tile holds 8 rows (8 accumulators: 9 loads per 8 FMAs), a two-block one 6 rows (12
// accumulators: 8 loads per 12 FMAs); with 32 (AVX-512) 8 rows either way (two blocks: 10 loads
// per 16 FMAs). Float panels only (bf16 ones are in pairs of k). Each output is the same chain
// of FMAs over k either way where one_chain holds, so the bits do not change there.
template <class F, class W>
constexpr bool paired() {
  return VBYTES >= 32 && std::is_same_v<W, F>;
}

// buf (rows, 2NB) (+)= `rows` (1..M) rows of a (kn of k) @ two adjacent panels of K rows
// (K*NB apart), from their row k0 (`panel` points there).
template <class F, int M, bool AT>
inline void pair_tile(const F* a, int64_t lda, int64_t rows, const F* panel, int64_t K,
                      int64_t kn, F* buf, bool add) {
  if constexpr (M > 0) {
    if (rows == M) tile<F, M, 2, AT>(a, lda, panel, NB<F>, kn, buf, 2 * NB<F>, add, K * NB<F>);
    else pair_tile<F, M - 1, AT>(a, lda, rows, panel, K, kn, buf, add);
  }
}

// One tile of `rows` (1..M) rows from b of bf16 values (`at`: stored as tile_bf16's AT takes
// them) times NV adjacent blocks' panels, one chain of sums per output: buf (rows, NV*NB).
template <int M, int NV>
inline void group_tile(const float* a, int64_t lda, bool at, int64_t b, int64_t rows,
                       const bf16* panel, int64_t K, float* buf, int64_t ps, int64_t vs) {
  if constexpr (M > 0) {
    if (rows == M) {
      if (at) tile_bf16<M, NV, true, true>(a + b, lda, panel, K, buf, ps, vs, vs);
      else tile_bf16<M, NV, false, true>(a + b * lda, lda, panel, K, buf, ps, vs, vs);
    } else {
      group_tile<M - 1, NV>(a, lda, at, b, rows, panel, K, buf, ps, vs);
    }
  }
}

// out (M, N) (+)= A w in the columns of blocks [jb0, jb1), w (K, N) from its pack_backward
// panels (nblk, K, NB); A = a (M rows, lda apart) or, with `at`, a^T (a: (K, lda), of which the
// first M columns): the backward's dx = dG W_ih and weight gradients dW = dG^T X, with the
// steps' register tiles. Rows in groups of 64, so a group's rows of A stay in L2 while the
// panels pass over them.
template <class F, class W>
RNNKERN_FLATTEN void product(const F* a, int64_t lda, bool at, int64_t M, const W* panels,
                             int64_t K, int64_t N, F* out, int64_t ldo, bool add, int64_t jb0,
                             int64_t jb1) {
  constexpr int64_t RG = 64;
  for (int64_t m0 = 0; m0 < M; m0 += RG) {
    const int64_t nm = imin(RG, M - m0);
    const F* am = at ? a + m0 : a + m0 * lda;
    auto put = [&](int64_t jb, int64_t b, const F* acc) {  // row b of block jb's product
      const int64_t j0 = jb * NB<F>, n = imin(NB<F>, N - j0);
      F* o = out + (m0 + b) * ldo + j0;
      store(o, add ? load(o, n) + load(acc) : load(acc), n);
    };
    int64_t jb = jb0;
    if constexpr (paired<F, W>()) {
      constexpr int MB = mb_max<F, 2>();
      // Several tiles: each slice of KC of K (8 KB of the two panels) stays in L1 while every
      // tile passes over it (the whole pair, 64 KB at K = 1024, came from L2 once per tile:
      // 60% of the FMA peak at 32 rows). Their tiles have 3+ rows, so one chain of FMAs per
      // output (k_unroll) continued slice after slice: the same bits as unsliced. With `at`
      // (weight gradients) the group's part of A is a row of 64 columns per k, lda apart: an
      // 8 KB slice's 128 k of it are 32 KB, all of L1 besides the panels, so those take 2 KB
      // slices (32 k; one thread's dW product at K = 1024, 4H = 1024: 42 -> 49 GFLOP/s).
      const int64_t KC = (at ? 2048 : 8192) / (2 * NB<F> * sizeof(F));
      alignas(64) F buf[RG * 2 * NB<F>];  // (nm, 2NB) the group's products
      const int64_t tiles = (nm + MB - 1) / MB, kc = tiles > 1 ? KC : K;
      for (; jb + 1 < jb1; jb += 2) {
        const W* panel = panels + jb * K * NB<F>;  // (2, K, NB)
        for (int64_t k0 = 0; k0 < K; k0 += kc) {
          const int64_t kn = imin(kc, K - k0);
          const F* ak = at ? am + k0 * lda : am + k0;  // (nm, kn) of A
          for (int64_t i = 0, b = 0, rows; i < tiles; ++i, b += rows) {
            rows = tile_rows(nm, tiles, i);
            if (at) pair_tile<F, MB, true>(ak + b, lda, rows, panel + k0 * NB<F>, K, kn,
                                           buf + b * 2 * NB<F>, k0 > 0);
            else pair_tile<F, MB, false>(ak + b * lda, lda, rows, panel + k0 * NB<F>, K, kn,
                                         buf + b * 2 * NB<F>, k0 > 0);
          }
        }
        for (int64_t r = 0; r < nm; ++r) {
          put(jb, r, buf + r * 2 * NB<F>);
          put(jb + 1, r, buf + r * 2 * NB<F> + NB<F>);
        }
      }
    }
    const F* ar = am;  // the group's rows of A as the tiles read them
    int64_t ldr = lda;
    if constexpr (is_bf16<W>) {  // rounded to bf16 once here, not by every tile of every block
      // (nm, K); with `at` as stored, (K, nm), or with vdpbf16ps paired ((K + 1) / 2, nm)
      thread_local std::vector<float> rounded;
      rounded.resize(static_cast<size_t>(((at && kNativeBf16) ? (K + 1) / 2 : K) * nm));
      float* r = rounded.data();
      if (!at) bf16_round_rows(am, lda, nm, K, r), ldr = K;
      else if (kNativeBf16) bf16_pair_rows(am, lda, K, nm, r), ldr = nm;
      else bf16_round_rows(am, lda, K, nm, r), ldr = nm;
      ar = r;
    }
    if constexpr (kNativeBf16 && is_bf16<W>) {
      // vdpbf16ps: up to 4 adjacent blocks per tile (6 rows x 4 vectors: 10 loads per 24
      // vdpbf16ps, against 9 per 8 with one block), each output one chain of sums (ONE), so
      // the bits do not depend on how a member's blocks fall into groups.
      auto group = [&](auto nv) {
        constexpr int NVG = decltype(nv)::value, MB = mb_max<F, NVG>();
        alignas(64) F buf[MB * NVG * NB<F>];  // (rows, NVG*NB) a tile's products
        const W* panel = panels + jb * K * NB<F>;  // (NVG, K, NB)
        const int64_t tiles = (nm + MB - 1) / MB, ps = 2 * NB<F>, vs = K * NB<F>;
        for (int64_t i = 0, b = 0, rows; i < tiles; ++i, b += rows) {
          rows = tile_rows(nm, tiles, i);
          group_tile<MB, NVG>(ar, ldr, at, b, rows, panel, K, buf, ps, vs);
          for (int64_t r = 0; r < rows; ++r)
            for (int v = 0; v < NVG; ++v) put(jb + v, b + r, buf + (r * NVG + v) * NB<F>);
        }
        jb += NVG;
      };
      while (jb < jb1) {
        if (jb1 - jb >= 4) group(std::integral_constant<int, 4>{});
        else if (jb1 - jb >= 2) group(std::integral_constant<int, 2>{});
        else group(std::integral_constant<int, 1>{});
      }
    }
    for (; jb < jb1; ++jb) {
      const W* panel = panels + jb * K * NB<F>;  // (K, NB)
      auto put1 = [&](int64_t b, const F* acc) { put(jb, b, acc); };
      if (at) panel_rows<F, 1, true>(ar, ldr, nm, panel, K, put1, is_bf16<W>);
      else panel_rows<F, 1>(ar, ldr, nm, panel, K, put1, is_bf16<W>);
    }
  }
}

// ---- the input projection

template <class F, class W>
RNNKERN_FLATTEN void project(const StepConst<F, W>& c, const F* x, int64_t rows, F* xp,
                             int64_t jb0, int64_t jb1) {
  const int64_t H = c.H, I = c.I, G = gates(c.cell), HX = c.HX, GHX = G * HX;
  constexpr int64_t RG = 64;  // rows per group: they stay in cache while every panel passes
  // x (rows, I) as the products take it, once per chunk on each thread
  const Rows<F, W> xq = operand_rows<F, W>(I > 0 ? x : nullptr, I, rows, I);
  for (int64_t r0 = 0; r0 < rows; r0 += RG) {
    const int64_t nr = imin(RG, rows - r0);
    const Rows<F, W> a = xq.from(r0);  // (nr, I)
    F* out = xp + r0 * GHX;            // (nr, G*HX)
    for (int64_t jb = jb0; jb < jb1; ++jb) {
      const int64_t j0 = jb * NB<F>, n = imin(NB<F>, H - j0);
      const W* panel = block<F>(c.wi, jb, I, G);  // (I, G, NB)
      const F* xb = c.xbias + j0;  // (G*H,) biases from unit j0
      auto put = [&](int64_t b, const F* acc) {  // whole blocks: units past H get 0
        for (int64_t v = 0; v < G; ++v)
          store(out + b * GHX + v * HX + j0, load(acc + v * NB<F>) + load(xb + v * H, n));
      };
      switch (G) {
        case 4: panel_rows<F, 4>(a, nr, panel, I, put); break;
        case 3: panel_rows<F, 3>(a, nr, panel, I, put); break;
        default: panel_rows<F, 1>(a, nr, panel, I, put);
      }
    }
  }
}

// ---- what the cells' epilogues share (cpp/kernels/cells)

// Each cell's forward_phase and backward_phase, and backward_finish if it has one (specialized
// in its file).
template <class C, class F, class W>
struct Kernels;
// &K::backward_finish, or null when the cell has none.
template <class K, class = void>
struct finish_of {
  static constexpr std::nullptr_t value = nullptr;
};
template <class K>
struct finish_of<K, std::void_t<decltype(&K::backward_finish)>> {
  static constexpr auto value = &K::backward_finish;
};

// fn(jb, j0, n) for hidden blocks [jb0, jb1): block jb has units [j0, j0 + n).
template <class F, class Fn>
inline void for_hidden_blocks(int64_t H, int64_t jb0, int64_t jb1, Fn&& fn) {
  for (int64_t jb = jb0; jb < jb1; ++jb) fn(jb, jb * NB<F>, imin(NB<F>, H - jb * NB<F>));
}

inline bool padded(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths != nullptr && t >= lengths[b];
}

// A padded step: the state is frozen and the output is zero.
template <class F>
inline void freeze(const Step<F>& s, int64_t H, int64_t b, int64_t j0, int64_t n) {
  std::memcpy(s.hn + b * H + j0, s.hp + b * H + j0, n * sizeof(F));
  if (s.cn) std::memcpy(s.cn + b * H + j0, s.cp + b * H + j0, n * sizeof(F));
  if (s.y) zero(s.y + b * H + j0, n);
}

template <class F>
inline void put_h(const Step<F>& s, int64_t H, int64_t b, int64_t j0, int64_t n, vec<F> h) {
  store(s.hn + b * H + j0, h, n);
  if (s.y) store(s.y + b * H + j0, h, n);
}

// At step t (from T-1 down to 0) the gradient reaching h_t is s.dh (paths that skip W_hh, and
// what padded steps carried) + dgh_{t+1} W_hh (the panel product) + dy_t.

template <class F, class W>
inline vec<F> grad_h(const StepConst<F, W>& c, const Step<F>& s, int64_t b, int64_t j0, int64_t n,
                     const F* acc, bool valid) {
  vec<F> dh = load(s.dh + b * c.P + j0, n) + load(acc);
  if (valid && s.dy) dh += load(s.dy + b * c.P + j0, n);
  return dh;
}

// A padded step passes the gradient of h_t (and c_t) to h_{t-1} and has zero dgates.
template <class F, class W>
inline void pass_through(const StepConst<F, W>& c, const Step<F>& s, int64_t b, int64_t j0,
                         int64_t n, vec<F> dh) {
  const int64_t H = c.H, G = gates(c.cell);
  store(s.dh + b * c.P + j0, dh, n);
  for (int64_t g = 0; g < G; ++g) {
    zero(s.dg + b * c.LDG + g * H + j0, n);
    if (s.dgh != s.dg) zero(s.dgh + b * c.LDG + g * H + j0, n);
  }
}

// Whether B rows make every tile sum each output in one chain of FMAs (k_unroll 1) both as
// panel_rows<F, 1>'s one-block tiles and as the product's two-block ones, which then give the
// same bits: B = 5-8 or B >= 10 (float and double, AVX2).
// With vdpbf16ps the product's tiles are one chain whatever their shape (tile_bf16's ONE), so
// only the one-block tiles count: B = 5-8 or B >= 10.
template <class F, class W>
constexpr bool one_chain(int64_t B) {
  auto each = [B](int MB, int NV) {
    const int64_t tiles = (B + MB - 1) / MB;
    return B > 0 && k_unroll(static_cast<int>(B / tiles) * NV) == 1;
  };
  if constexpr (kNativeBf16 && is_bf16<W>) return each(mb_max<F, 1>(), 1);
  return each(mb_max<F, 1>(), 1) && each(mb_max<F, 2>(), 2);
}

// A backward step's dh products, a (B rows, lda apart) @ the panels (K, NB) of hidden blocks
// [jb0, jb1) (block jb's at panels + jb * K * NB): rows(jb, epi) calls epi(b, acc) for every row
// b of block jb, as panel_rows<F, 1> of its panel does. Where two-block tiles give the same bits
// (one_chain), the constructor makes all the blocks' sums at once with the product's two-block
// tiles (12 FMAs per 8 loads; one-block tiles: 8 per 9; vdpbf16ps: up to four blocks, 24 per
// 10), into this thread's buffer, which rows() reads; else rows() runs panel_rows<F, 1>. One
// thread, B = 32, H = 256: 55 -> 69 GFLOP/s (float, AVX2).
template <class F, class W>
struct DhRows {
  const F* a;
  int64_t lda, B;
  const W* panels;
  int64_t K, ld;            // ld: H rounded up to whole blocks
  const F* sums = nullptr;  // (B, ld) the sums, or null: panel_rows per block
  DhRows(const F* a_, int64_t lda_, int64_t B_, const W* panels_, int64_t K_, int64_t H,
         int64_t jb0, int64_t jb1)
      : a(a_), lda(lda_), B(B_), panels(panels_), K(K_), ld((H + NB<F> - 1) / NB<F> * NB<F>) {
    if constexpr (paired<F, W>() || (kNativeBf16 && is_bf16<W>)) {
      if (a != nullptr && jb1 - jb0 >= 2 && one_chain<F, W>(B)) {
        thread_local std::vector<F> buf;  // (B, ld); lanes past H: not written, not stored
        if (buf.size() < static_cast<size_t>(B * ld)) buf.assign(B * ld, F(0));
        product<F, W>(a, lda, false, B, panels, K, H, buf.data(), ld, false, jb0, jb1);
        sums = buf.data();
      }
    }
  }
  template <class Epi>
  void rows(int64_t jb, Epi&& epi) const {
    if (sums == nullptr) return panel_rows<F, 1>(a, lda, B, panels + jb * K * NB<F>, K, epi);
    for (int64_t b = 0; b < B; ++b) epi(b, static_cast<const F*>(sums + b * ld + jb * NB<F>));
  }
};

// The epilogue of a backward product: padded rows pass their gradient through, the others get
// body(b, dh) with dh the whole gradient reaching h_t.
template <class F, class W, class Body>
inline auto rows_dh(const StepConst<F, W>& c, const Step<F>& s, int64_t j0, int64_t n, Body&& body) {
  return [&c, &s, j0, n, body](int64_t b, const F* acc) {
    const bool valid = !padded(c.lengths, b, s.t);
    vec<F> dh = grad_h(c, s, b, j0, n, acc, valid);
    if (!valid) return pass_through(c, s, b, j0, n, dh);
    body(b, dh);
  };
}

}  // namespace
}  // namespace RNNKERN_ISA
}  // namespace rnnkern

#include "cells/all.hpp"  // every cell's traits and epilogues

namespace rnnkern {
namespace RNNKERN_ISA {
namespace {

// The ISA's table of precision (F, W): the shared kernels, and each cell's epilogues at its id.
// int8 (inference) has no backward kernels.
template <class F, class W>
constexpr KernelTable<F, W> make_table() {
  KernelTable<F, W> t{RNNKERN_ISA_NAME, NB<F>, pack_forward<F, W>, nullptr, nullptr,
                      project<F, W>, nullptr, nullptr, {}};
  if constexpr (!is_s8<W>)
    t.pack_backward = pack_backward<F, W>, t.zero_row = zero_row<F, W>,
    t.product = product<F, W>;
#define RNNKERN_CELL_ENTRY(C)                                                      \
  {                                                                                \
    CellKernels<F, W>& ck = t.cells[static_cast<int>(C::id)];                      \
    ck.forward_phase = Kernels<C, F, W>::forward_phase;                            \
    if constexpr (!is_s8<W>) {                                                     \
      ck.backward_phase = Kernels<C, F, W>::backward_phase;                        \
      ck.backward_finish = finish_of<Kernels<C, F, W>>::value;                     \
    }                                                                              \
  }
  RNNKERN_CELLS(RNNKERN_CELL_ENTRY)
#undef RNNKERN_CELL_ENTRY
  return t;
}
template <class F, class W>
const KernelTable<F, W> table = make_table<F, W>();

}  // namespace
}  // namespace RNNKERN_ISA
}  // namespace rnnkern
