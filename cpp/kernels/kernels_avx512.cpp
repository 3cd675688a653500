// The float and double kernels compiled for avx512 (vector width 64 bytes; flags in
// CMakeLists.txt); its bf16 and int8 ones are kernels_avx512_lowp.cpp's.
#define RNNKERN_ISA avx512
#define RNNKERN_ISA_NAME "avx512"
#define RNNKERN_VBYTES 64
#include "kernels_impl.hpp"

namespace rnnkern {
template <class F, class W>
const KernelTable<F, W>* avx512_kernels() { return &avx512::table<F, W>; }
#define RNNKERN_INSTANTIATE(F, W) template const KernelTable<F, W>* avx512_kernels<F, W>();
RNNKERN_NATIVE_PRECISIONS(RNNKERN_INSTANTIATE)
#undef RNNKERN_INSTANTIATE
}  // namespace rnnkern
