// The cells' traits, indexed by id, from their files (cpp/kernels/cells).
#include <stdexcept>
#include <string>

#include "cells/all.hpp"

namespace rnnkern {

const CellTraits& cell_traits(Cell cell) {
  static const CellTraits* const table = [] {
    static CellTraits t[num_cells] = {};
#define RNNKERN_TRAITS_ENTRY(C) t[static_cast<int>(C::id)] = C::traits;
    RNNKERN_CELLS(RNNKERN_TRAITS_ENTRY)
#undef RNNKERN_TRAITS_ENTRY
    return t;
  }();
  const int id = static_cast<int>(cell);
  if (id < 0 || id >= num_cells || table[id].name == nullptr)
    throw std::invalid_argument("cell: unknown cell id " + std::to_string(id));
  return table[id];
}

int gates(Cell cell) { return cell_traits(cell).gates; }

}  // namespace rnnkern
