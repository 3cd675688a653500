// The kernels compiled for avx2 (vector width 32 bytes; flags in CMakeLists.txt).
#define RNNKERN_ISA avx2
#define RNNKERN_ISA_NAME "avx2"
#define RNNKERN_VBYTES 32
#include "kernels_impl.hpp"

namespace rnnkern {
const KernelTable<float>* kernels_avx2_f32() { return &avx2::table<float>; }
const KernelTable<double>* kernels_avx2_f64() { return &avx2::table<double>; }
}  // namespace rnnkern
