// Runtime ISA dispatch: the best kernels this CPU runs, or RNNKERN_ISA=scalar|avx2|avx512.
#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels.hpp"

namespace rnnkern {
namespace {

enum Isa { SCALAR = 0, AVX2 = 1, AVX512 = 2, AVX512_LOWP = 3 };  // AVX512_LOWP: not an ISA to
// choose, the features avx512's bf16 and int8 tables need besides AVX512 (AVX512_BF16, _VNNI)
const char* const NAMES[] = {"scalar", "avx2", "avx512"};

bool cpu_has(Isa isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  switch (isa) {
    case AVX2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case AVX512:
#if defined(RNNKERN_NO_AVX512)  // this build has no AVX-512 kernels (CMake RNNKERN_AVX512=OFF)
      return false;
#endif
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case AVX512_LOWP:
      return cpu_has(AVX512) && __builtin_cpu_supports("avx512bf16") &&
             __builtin_cpu_supports("avx512vnni");
    default:
      return true;
  }
#else
  return isa == SCALAR;
#endif
}

Isa parse(const std::string& name) {
  for (int i = 0; i < 3; ++i)
    if (name == NAMES[i]) {
      Isa isa = static_cast<Isa>(i);
      if (!cpu_has(isa))
        throw std::invalid_argument("name: ISA '" + name +
                                    "' is not supported on this CPU (supported: " +
                                    supported_isas() + ")");
      return isa;
    }
  throw std::invalid_argument("name: unknown ISA '" + name + "': expected scalar, avx2 or avx512");
}

// RNNKERN_ISA if it names an ISA this CPU runs, else the best one (the Python package reports a
// bad value at import).
Isa initial() {
  const char* env = std::getenv("RNNKERN_ISA");
  try {
    if (env && *env) return parse(env);
  } catch (const std::invalid_argument&) {
  }
  return cpu_has(AVX512) ? AVX512 : cpu_has(AVX2) ? AVX2 : SCALAR;
}

std::atomic<int>& current() {
  static std::atomic<int> isa{initial()};
  return isa;
}

}  // namespace

#if !(defined(__x86_64__) && defined(__GNUC__))  // only the scalar kernels are built
#define RNNKERN_NO_ISA(F, W)                                                   \
  template <>                                                                  \
  const KernelTable<F, W>* avx2_kernels<F, W>() { return nullptr; }           \
  template <>                                                                  \
  const KernelTable<F, W>* avx512_kernels<F, W>() { return nullptr; }
RNNKERN_PRECISIONS(RNNKERN_NO_ISA)
#undef RNNKERN_NO_ISA
#elif defined(RNNKERN_NO_AVX512)
#define RNNKERN_NO_ISA(F, W) \
  template <>               \
  const KernelTable<F, W>* avx512_kernels<F, W>() { return nullptr; }
RNNKERN_PRECISIONS(RNNKERN_NO_ISA)
#undef RNNKERN_NO_ISA
#endif

// One table per (precision, ISA), filled once; the ISA in use picks the row. bf16 and int8 on
// an AVX-512 CPU without AVX512_BF16 and AVX512_VNNI run the AVX2 kernels (their AVX-512 ones
// are built on vdpbf16ps and vpdpbusd).
template <class F, class W>
const KernelTable<F, W>* kernels() {
  constexpr bool low = std::is_same_v<W, bf16> || std::is_same_v<W, int8_t>;
  static const KernelTable<F, W>* const tables[] = {
      scalar_kernels<F, W>(), avx2_kernels<F, W>(),
      !low || cpu_has(AVX512_LOWP) ? avx512_kernels<F, W>() : avx2_kernels<F, W>()};
  return tables[current().load(std::memory_order_relaxed)];
}

std::string kernel_isa(Precision prec) {
  if (prec == Precision::bf16) return kernels<float, bf16>()->isa;
  if (prec == Precision::int8) return kernels<float, int8_t>()->isa;
  return kernels<float>()->isa;
}
#define RNNKERN_INSTANTIATE(F, W) template const KernelTable<F, W>* kernels<F, W>();
RNNKERN_PRECISIONS(RNNKERN_INSTANTIATE)
#undef RNNKERN_INSTANTIATE

std::string isa() { return NAMES[current().load()]; }
void set_isa(const std::string& name) { current() = parse(name); }

std::string supported_isas() {
  std::string s;
  for (int i = 0; i < 3; ++i)
    if (cpu_has(static_cast<Isa>(i)))
      s += (s.empty() ? "" : ",") + std::string(NAMES[i]);
  return s;
}

}  // namespace rnnkern
