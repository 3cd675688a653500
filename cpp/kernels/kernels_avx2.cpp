// The kernels compiled for avx2 (vector width 32 bytes; flags in CMakeLists.txt).
#define RNNKERN_ISA avx2
#define RNNKERN_ISA_NAME "avx2"
#define RNNKERN_VBYTES 32
#include "kernels_impl.hpp"

namespace rnnkern {
template <class F>
const KernelTable<F>* avx2_kernels() { return &avx2::table<F>; }
#define RNNKERN_INSTANTIATE(F) template const KernelTable<F>* avx2_kernels<F>();
RNNKERN_PRECISIONS(RNNKERN_INSTANTIATE)
#undef RNNKERN_INSTANTIATE
}  // namespace rnnkern
