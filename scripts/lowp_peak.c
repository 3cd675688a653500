/* The machine's ceilings for one core in the instruction sequences of rnnkern's low-precision
 * products (docs/precision.md), as fma_peak.c does for float32: independent accumulator chains,
 * operands in registers, no memory. Multiply-adds count 2 operations (GOP/s).
 *   int8: u8 x s8 in groups of 4 to s32 -- vpdpbusd where the CPU has AVX512_VNNI (zmm) or
 *         AVX-VNNI (ymm), else AVX2's vpmaddubsw (pairs to s16) + vpmaddwd with ones (to s32)
 *         + vpaddd: 32 multiply-adds per three instructions;
 *   bf16: vdpbf16ps where the CPU has AVX512_BF16, else the emulated path: bf16 widened to
 *         float32 by a 16-bit shift (vpslld) and a float32 FMA, the shift amortized over the
 *         rows of a tile as in the kernels (one weight vector widened per MB = 5 FMAs).
 * The AVX512_VNNI and AVX512_BF16 branches ran on an AMD EPYC Zen 5 (session 20): 991 and 446
 * GOP/s per core, against 240 GFLOP/s of float32 FMA (fma_peak.c). The AVX-VNNI (ymm) branch
 * has not run alone (a CPU with both takes the zmm one).
 *   gcc -O2 -march=native scripts/lowp_peak.c -o /tmp/lowp_peak && /tmp/lowp_peak          */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

enum { CHAINS = 12 };
static const long kIters = 20000000;

static double seconds(struct timespec a, struct timespec b) {
  return (b.tv_sec - a.tv_sec) + 1e-9 * (b.tv_nsec - a.tv_nsec);
}

static void report(const char* what, double macs, double s, long sink) {
  printf("%-58s %6.1f GOP/s per core (checksum %ld)\n", what, 2 * macs / s / 1e9, sink);
}

static void int8_peak(void) {
  struct timespec t0, t1;
  long sink = 0;
#if (defined(__AVX512VNNI__) && defined(__AVX512F__)) || defined(__AVXVNNI__)
#if defined(__AVX512VNNI__) && defined(__AVX512F__)
  typedef __m512i ivec;
#define SET1_8 _mm512_set1_epi8
#define SET1_32 _mm512_set1_epi32
#define DPBUSD _mm512_dpbusd_epi32
#define LANE0(v) _mm_cvtsi128_si32(_mm512_castsi512_si128(v))
  const char* what = "int8 (AVX512_VNNI vpdpbusd, zmm)";
#else
  typedef __m256i ivec;
#define SET1_8 _mm256_set1_epi8
#define SET1_32 _mm256_set1_epi32
#define DPBUSD _mm256_dpbusd_avx_epi32
#define LANE0(v) _mm256_extract_epi32(v, 0)
  const char* what = "int8 (AVX-VNNI vpdpbusd, ymm)";
#endif
  ivec acc[CHAINS];
  for (int i = 0; i < CHAINS; i++) acc[i] = SET1_32(i);
  const ivec a = SET1_8(3), w = SET1_8(-2);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long k = 0; k < kIters; k++)
#pragma GCC unroll 12
    for (int i = 0; i < CHAINS; i++) acc[i] = DPBUSD(acc[i], a, w);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  for (int i = 0; i < CHAINS; i++) sink += LANE0(acc[i]);
  report(what, kIters * (double)CHAINS * sizeof(ivec), seconds(t0, t1), sink);
#else
  __m256i acc[CHAINS];
  for (int i = 0; i < CHAINS; i++) acc[i] = _mm256_set1_epi32(i);
  /* The operands vary with the chain so the compiler cannot fold the products. */
  __m256i a[CHAINS];
  for (int i = 0; i < CHAINS; i++) a[i] = _mm256_set1_epi8((char)(3 + i));
  const __m256i w = _mm256_set1_epi8(-2), ones = _mm256_set1_epi16(1);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long k = 0; k < kIters; k++) {
#pragma GCC unroll 12
    for (int i = 0; i < CHAINS; i++)
      acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(_mm256_maddubs_epi16(a[i], w), ones));
    __asm__ volatile("" : "+x"(a[0]));  /* keep the products in the loop */
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  for (int i = 0; i < CHAINS; i++) sink += _mm256_extract_epi32(acc[i], 0);
  report("int8 (AVX2 vpmaddubsw + vpmaddwd + vpaddd, ymm)", kIters * (double)CHAINS * 32,
         seconds(t0, t1), sink);
#endif
}

static void bf16_peak(void) {
  struct timespec t0, t1;
  long sink = 0;
#if defined(__AVX512BF16__)
  __m512 acc[CHAINS];
  for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps(i * 1e-3f);
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), w = (__m512bh)_mm512_set1_epi16(0x3c00);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long k = 0; k < kIters; k++)
#pragma GCC unroll 12
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, w);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  for (int i = 0; i < CHAINS; i++) sink += (long)_mm512_reduce_add_ps(acc[i]);
  report("bf16 (AVX512_BF16 vdpbf16ps, zmm)", kIters * (double)CHAINS * 32, seconds(t0, t1), sink);
#else
  /* A tile of MB = 5 rows x NV = 2 vectors: each weight vector (8 bf16 in the low halves of
   * 32-bit lanes) widened once by a shift, then one FMA per row. */
  enum { MB = 5, NV = 2 };  /* 10 accumulators: with the weights, x and a temporary, 14 of 16 ymm */
  __m256 acc[MB][NV];
  for (int m = 0; m < MB; m++)
    for (int v = 0; v < NV; v++) acc[m][v] = _mm256_set1_ps((m * NV + v) * 1e-3f);
  __m256i w16[NV];
  for (int v = 0; v < NV; v++) w16[v] = _mm256_set1_epi32(0x3f7f + v);
  const __m256 x = _mm256_set1_ps(0.9999f);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long k = 0; k < kIters; k++) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; v++) {
      const __m256 w = _mm256_castsi256_ps(_mm256_slli_epi32(w16[v], 16));
#pragma GCC unroll 4
      for (int m = 0; m < MB; m++) acc[m][v] = _mm256_fmadd_ps(w, x, acc[m][v]);
    }
    __asm__ volatile("" : "+x"(w16[0]));
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  for (int m = 0; m < MB; m++)
    for (int v = 0; v < NV; v++) sink += (long)((float*)&acc[m][v])[0];
  report("bf16 emulated (vpslld + float32 FMA, AVX2 ymm, MB = 5)",
         kIters * (double)MB * NV * 8, seconds(t0, t1), sink);
#endif
}

int main(void) {
  int8_peak();
  bf16_peak();
  return 0;
}
