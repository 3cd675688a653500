/* The machine's float32 FMA ceiling for one core: independent vector FMA chains (24 zmm with
 * AVX-512; 12 ymm with AVX2, whose 16 registers would spill 24), no memory.
 * The bound that docs/design.md divides the FLOPs of a benchmark by.
 *   gcc -O2 -march=native scripts/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak            */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#ifdef __AVX512F__
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define NCHAINS 24
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define NCHAINS 12
#endif

int main(void) {
  enum { CHAINS = NCHAINS };
  vec acc[CHAINS];
  for (int i = 0; i < CHAINS; i++) acc[i] = SET1(i * 1e-3f);
  const vec m = SET1(0.9999f), c = SET1(1e-4f);
  const long iters = 20000000;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long k = 0; k < iters; k++)
#pragma GCC unroll 24
    for (int i = 0; i < CHAINS; i++) acc[i] = FMA(acc[i], m, c);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  const double s = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  float sink = 0;
  for (int i = 0; i < CHAINS; i++) sink += ((float*)&acc[i])[0];
  printf("%.1f GFLOP/s per core (float32, %d lanes; checksum %g)\n",
         iters * (double)CHAINS * LANES * 2 / s / 1e9, LANES, sink);
  return 0;
}
