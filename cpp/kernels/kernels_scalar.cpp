// The kernels compiled for scalar (vector width 16 bytes; flags in CMakeLists.txt).
#define RNNKERN_ISA scalar
#define RNNKERN_ISA_NAME "scalar"
#define RNNKERN_VBYTES 16
#include "kernels_impl.hpp"

namespace rnnkern {
template <class F>
const KernelTable<F>* scalar_kernels() { return &scalar::table<F>; }
#define RNNKERN_INSTANTIATE(F) template const KernelTable<F>* scalar_kernels<F>();
RNNKERN_PRECISIONS(RNNKERN_INSTANTIATE)
#undef RNNKERN_INSTANTIATE
}  // namespace rnnkern
