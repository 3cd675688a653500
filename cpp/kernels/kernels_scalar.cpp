// The kernels compiled for scalar (vector width 16 bytes; flags in CMakeLists.txt).
#define RNNKERN_ISA scalar
#define RNNKERN_ISA_NAME "scalar"
#define RNNKERN_VBYTES 16
#include "kernels_impl.hpp"

namespace rnnkern {
const KernelTable<float>* kernels_scalar_f32() { return &scalar::table<float>; }
const KernelTable<double>* kernels_scalar_f64() { return &scalar::table<double>; }
}  // namespace rnnkern
