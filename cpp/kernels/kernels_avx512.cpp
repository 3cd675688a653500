// The kernels compiled for avx512 (vector width 64 bytes; flags in CMakeLists.txt).
#define RNNKERN_ISA avx512
#define RNNKERN_ISA_NAME "avx512"
#define RNNKERN_VBYTES 64
#include "kernels_impl.hpp"

namespace rnnkern {
template <class F>
const KernelTable<F>* avx512_kernels() { return &avx512::table<F>; }
#define RNNKERN_INSTANTIATE(F) template const KernelTable<F>* avx512_kernels<F>();
RNNKERN_PRECISIONS(RNNKERN_INSTANTIATE)
#undef RNNKERN_INSTANTIATE
}  // namespace rnnkern
