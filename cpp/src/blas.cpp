#include "blas.hpp"

#include <climits>
#include <stdexcept>
#include <string>

#include "rnnkern/rnnkern.hpp"

extern "C" {
// The CBLAS entry points of scipy-openblas32 (32-bit integers, symbols prefixed scipy_).
enum RnnkernCblasOrder { RnnkernRowMajor = 101 };
enum RnnkernCblasTranspose { RnnkernNoTrans = 111, RnnkernTrans = 112 };
void scipy_cblas_sgemm(int order, int ta, int tb, int M, int N, int K, float alpha, const float* A,
                       int lda, const float* B, int ldb, float beta, float* C, int ldc);
void scipy_cblas_dgemm(int order, int ta, int tb, int M, int N, int K, double alpha,
                       const double* A, int lda, const double* B, int ldb, double beta, double* C,
                       int ldc);
void scipy_openblas_set_num_threads(int n);
char* scipy_openblas_get_config(void);
char* scipy_openblas_get_corename(void);
}

namespace rnnkern {
namespace {

int as_int(int64_t v) {
  if (v > INT_MAX) throw std::overflow_error("matrix dimension exceeds the BLAS's 32-bit range");
  return static_cast<int>(v);
}

// rnnkern's threads call the BLAS concurrently, each on its own slice: keep it single-threaded.
struct SingleThreaded {
  SingleThreaded() { scipy_openblas_set_num_threads(1); }
};
const SingleThreaded single_threaded;

}  // namespace

template <>
void gemm<float>(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  scipy_cblas_sgemm(RnnkernRowMajor, ta ? RnnkernTrans : RnnkernNoTrans,
                    tb ? RnnkernTrans : RnnkernNoTrans, as_int(M), as_int(N), as_int(K), alpha, A,
                    as_int(lda), B, as_int(ldb), beta, C, as_int(ldc));
}

template <>
void gemm<double>(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha,
                  const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                  double* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  scipy_cblas_dgemm(RnnkernRowMajor, ta ? RnnkernTrans : RnnkernNoTrans,
                    tb ? RnnkernTrans : RnnkernNoTrans, as_int(M), as_int(N), as_int(K), alpha, A,
                    as_int(lda), B, as_int(ldb), beta, C, as_int(ldc));
}

void check_blas_dims(int64_t a, int64_t b, int64_t c, int64_t d) {
  for (int64_t v : {a, b, c, d}) as_int(v);
}

std::string blas_info() {
  return std::string("scipy-openblas32 ") + scipy_openblas_get_config() + " (core " +
         scipy_openblas_get_corename() + ")";
}

}  // namespace rnnkern
