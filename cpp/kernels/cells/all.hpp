// The cells: every file in cpp/kernels/cells, and the list that the kernel tables
// (kernels_impl.hpp) and the traits table (cpp/src/cells.cpp) are built from. A new cell: its
// file, an include and an entry here, and its id in rnnkern::Cell (rnnkern.hpp).
#pragma once
#include "cells/gru.hpp"
#include "cells/gru_rh.hpp"
#include "cells/lstm.hpp"
#include "cells/rnn.hpp"

#define RNNKERN_CELLS(X) \
  X(cells::RnnTanh) X(cells::RnnRelu) X(cells::RnnSigmoid) X(cells::Lstm) X(cells::Gru) X(cells::GruRh)
