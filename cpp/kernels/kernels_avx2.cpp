// The kernels compiled for avx2 (vector width 32 bytes; flags in CMakeLists.txt).
#define RNNKERN_ISA avx2
#define RNNKERN_ISA_NAME "avx2"
#define RNNKERN_VBYTES 32
#include "kernels_impl.hpp"

namespace rnnkern {
template <class F, class W>
const KernelTable<F, W>* avx2_kernels() { return &avx2::table<F, W>; }
#define RNNKERN_INSTANTIATE(F, W) template const KernelTable<F, W>* avx2_kernels<F, W>();
RNNKERN_PRECISIONS(RNNKERN_INSTANTIATE)
#undef RNNKERN_INSTANTIATE
}  // namespace rnnkern
