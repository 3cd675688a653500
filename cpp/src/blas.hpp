// General matrix products come from a well-kept BLAS (scipy-openblas32, the OpenBLAS SciPy builds
// against), called single-threaded from rnnkern's own threads.
#pragma once
#include <cstdint>

namespace rnnkern {

// C (M, N) = alpha * op(A) op(B) + beta * C, row-major; op(X) = X^T when the flag is set.
template <class F>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, F alpha, const F* A,
          int64_t lda, const F* B, int64_t ldb, F beta, F* C, int64_t ldc);

// Throws std::overflow_error unless every dimension fits the BLAS's 32-bit integers: called
// before any parallel region, so no thread ever throws while the others wait at a barrier.
void check_blas_dims(int64_t a, int64_t b, int64_t c, int64_t d);

}  // namespace rnnkern
