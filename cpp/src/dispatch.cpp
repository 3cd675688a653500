// Runtime ISA dispatch: the best kernels this CPU runs, or RNNKERN_ISA=scalar|avx2|avx512.
#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "rnnkern/kernels.hpp"

namespace rnnkern {
namespace {

enum Isa { SCALAR = 0, AVX2 = 1, AVX512 = 2 };
const char* const NAMES[] = {"scalar", "avx2", "avx512"};

bool cpu_has(Isa isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  switch (isa) {
    case AVX2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case AVX512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
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
const KernelTable<float>* kernels_avx2_f32() { return nullptr; }
const KernelTable<double>* kernels_avx2_f64() { return nullptr; }
const KernelTable<float>* kernels_avx512_f32() { return nullptr; }
const KernelTable<double>* kernels_avx512_f64() { return nullptr; }
#endif

template <>
const KernelTable<float>* kernels<float>() {
  switch (current().load(std::memory_order_relaxed)) {
    case AVX512: return kernels_avx512_f32();
    case AVX2: return kernels_avx2_f32();
    default: return kernels_scalar_f32();
  }
}

template <>
const KernelTable<double>* kernels<double>() {
  switch (current().load(std::memory_order_relaxed)) {
    case AVX512: return kernels_avx512_f64();
    case AVX2: return kernels_avx2_f64();
    default: return kernels_scalar_f64();
  }
}

std::string isa() { return NAMES[current().load()]; }
void set_isa(const std::string& name) { current() = parse(name); }

std::string supported_isas() {
  std::string s;
  for (int i = 0; i < 3; ++i)
    if (cpu_has(static_cast<Isa>(i)))
      s += (s.empty() ? "" : ",") + std::string(NAMES[i]);
  return s;
}

int gates(Cell cell) {
  switch (cell) {
    case Cell::lstm: return 4;
    case Cell::gru:
    case Cell::gru_rh: return 3;
    default: return 1;
  }
}

}  // namespace rnnkern
