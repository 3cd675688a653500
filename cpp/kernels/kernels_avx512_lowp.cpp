// The bf16 and int8 kernels compiled for avx512 with AVX512_BF16 (vdpbf16ps) and AVX512_VNNI
// (vpdpbusd) (flags in CMakeLists.txt); dispatch.cpp uses them where the CPU has both, and the
// avx2 ones elsewhere. The float and double kernels of avx512 are kernels_avx512.cpp's.
#define RNNKERN_ISA avx512_lowp
#define RNNKERN_ISA_NAME "avx512"
#define RNNKERN_VBYTES 64
#include "kernels_impl.hpp"

namespace rnnkern {
template <class F, class W>
const KernelTable<F, W>* avx512_kernels() { return &avx512_lowp::table<F, W>; }
#define RNNKERN_INSTANTIATE(F, W) template const KernelTable<F, W>* avx512_kernels<F, W>();
RNNKERN_LOW_PRECISIONS(RNNKERN_INSTANTIATE)
#undef RNNKERN_INSTANTIATE
}  // namespace rnnkern
