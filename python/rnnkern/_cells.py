"""The cells' facts, from the compiled core's traits (cpp/kernels/cells/<cell>.hpp): the one
place where gate counts, gate order and cell ids are written down."""
from __future__ import annotations

from typing import Any

from . import _core

#: Every cell of the core by name ("rnn_tanh", ..., "lstm", "gru", "gru_rh"): its traits
#: (id, family, gate_names, activation, gates, main_gates, phases, cell_state, cache_gates, aux,
#: separate_b_hn, recurrent_dgates, peepholes).
CELLS: dict[str, dict[str, Any]] = {c["name"]: c for c in _core.cells()}
#: Number of gate blocks (of H rows each) in w_ih / w_hh per cell family.
GATES: dict[str, int] = {c["family"]: c["gates"] for c in CELLS.values()}
#: Gate order within the G*H rows (PyTorch's), per family.
GATE_NAMES: dict[str, tuple[str, ...]] = {c["family"]: tuple(c["gate_names"])
                                          for c in CELLS.values()}
#: Activations of the vanilla RNN (rnn_forward's nonlinearity), and their cell ids.
RNN_IDS: dict[str, int] = {c["activation"]: c["id"] for c in CELLS.values()
                           if c["family"] == "rnn"}
NONLINEARITIES: tuple[str, ...] = tuple(RNN_IDS)
LSTM: int = CELLS["lstm"]["id"]
GRU: int = CELLS["gru"]["id"]  # linear before reset (PyTorch's)
GRU_RH: int = CELLS["gru_rh"]["id"]  # reset gate on h (ONNX's default)
#: Cell family of each id.
FAMILY: dict[int, str] = {c["id"]: c["family"] for c in CELLS.values()}
#: Every cell's traits by id.
BY_ID: dict[int, dict[str, Any]] = {c["id"]: c for c in CELLS.values()}
