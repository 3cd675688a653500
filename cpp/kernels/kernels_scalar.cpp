// The kernels compiled for scalar (vector width 16 bytes; flags in CMakeLists.txt).
#define RNNKERN_ISA scalar
#define RNNKERN_ISA_NAME "scalar"
#define RNNKERN_VBYTES 16
#include "kernels_impl.hpp"

namespace rnnkern {
template <class F, class W>
const KernelTable<F, W>* scalar_kernels() { return &scalar::table<F, W>; }
#define RNNKERN_INSTANTIATE(F, W) template const KernelTable<F, W>* scalar_kernels<F, W>();
RNNKERN_PRECISIONS(RNNKERN_INSTANTIATE)
#undef RNNKERN_INSTANTIATE
}  // namespace rnnkern
