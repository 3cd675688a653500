// The kernels compiled for avx512 (vector width 64 bytes; flags in CMakeLists.txt).
#define RNNKERN_ISA avx512
#define RNNKERN_ISA_NAME "avx512"
#define RNNKERN_VBYTES 64
#include "kernels_impl.hpp"

namespace rnnkern {
const KernelTable<float>* kernels_avx512_f32() { return &avx512::table<float>; }
const KernelTable<double>* kernels_avx512_f64() { return &avx512::table<double>; }
}  // namespace rnnkern
