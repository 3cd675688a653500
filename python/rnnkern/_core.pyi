"""Type stubs of the compiled core (cpp/bindings/module.cpp); use the rnnkern package instead."""
from typing import Any, overload

import numpy as np
import numpy.typing as npt
from typing_extensions import Unpack

_Array = npt.NDArray[Any]

def cells() -> list[dict[str, Any]]: ...
def forward(
    cell_id: int,
    x: _Array,
    h0: _Array | None,
    c0: _Array | None,
    w_ih: _Array,
    w_hh: _Array,
    b_ih: _Array | None,
    b_hh: _Array | None,
    lengths: npt.NDArray[np.int64] | None,
    training: bool,
    w_peep: _Array | None = None,
    w_hr: _Array | None = None,
    precision: int = 0,
) -> tuple[_Array, _Array, _Array | None, tuple[_Array | None, ...]]: ...
def backward(
    cell_id: int,
    x: _Array,
    w_ih: _Array,
    w_hh: _Array,
    bias: bool,
    lengths: npt.NDArray[np.int64] | None,
    cache: tuple[_Array | None, ...],
    dy: _Array | None,
    dh_n: _Array | None,
    dc_n: _Array | None,
    w_peep: _Array | None = None,
    w_hr: _Array | None = None,
    precision: int = 0,
) -> tuple[_Array, _Array, _Array | None, _Array, _Array, _Array | None, _Array | None,
           Unpack[tuple[_Array, ...]]]: ...  # the seven, then dw_hr with w_hr, dw_peep with w_peep
class Pack:
    """One cell's weights packed once (rnnkern::Pack of their dtype); immutable."""

    def __init__(
        self,
        cell_id: int,
        w_ih: _Array,
        w_hh: _Array,
        b_ih: _Array | None,
        b_hh: _Array | None,
        forward: bool = True,
        backward: bool = True,
        w_peep: _Array | None = None,
        w_hr: _Array | None = None,
        precision: int = 0,
        ln_gates: _Array | None = None,
        ln_cell: _Array | None = None,
    ) -> None: ...
    @property
    def cell_id(self) -> int: ...
    @property
    def input_size(self) -> int: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def output_size(self) -> int: ...  # P: w_hr's rows, else H
    @property
    def has_projection(self) -> bool: ...
    @property
    def has_bias(self) -> bool: ...
    @property
    def has_peepholes(self) -> bool: ...
    @property
    def has_layer_norm(self) -> bool: ...
    @property
    def isa(self) -> str: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def precision(self) -> int: ...
    def step(
        self, x: object, h0: object, c0: object, training: bool
    ) -> tuple[Any, ...] | None: ...

def forward_packed(
    pack: Pack,
    x: _Array,
    h0: _Array | None,
    c0: _Array | None,
    lengths: npt.NDArray[np.int64] | None,
    training: bool,
) -> tuple[_Array, _Array, _Array | None, tuple[_Array | None, ...]]: ...
def backward_packed(
    pack: Pack,
    x: _Array,
    lengths: npt.NDArray[np.int64] | None,
    cache: tuple[_Array | None, ...],
    dy: _Array | None,
    dh_n: _Array | None,
    dc_n: _Array | None,
    into: tuple[_Array | None, ...] | Rows | None = None,
    *,
    need_dx: bool = True,
) -> tuple[_Array | None, ...]: ...  # the seven gradients, then dw_hr, dw_peep if the pack has
# them; with into (dw_ih, dw_hh, db_ih, db_hh[, dw_hr][, dw_peep]) only dx, dh0, dc0: the
# weights' gradients are added to into's arrays; with into a Rows (one step, no lengths,
# projection, peepholes or layer norm) only dx, dh0, dc0: the rows the weights' gradients
# need are kept there for weight_gradients; need_dx=False: dx is None (not computed)

class Rows:
    """A training pass's rows kept by one-step backwards, for weight_gradients."""

    def __init__(self) -> None: ...
    @property
    def rows(self) -> int: ...

@overload
def weight_gradients(
    pack: Pack, rows: Rows, into: None = None
) -> tuple[_Array, _Array, _Array | None, _Array | None]: ...  # dw_ih, dw_hh, db_ih, db_hh of
# every row kept (one product)
@overload
def weight_gradients(pack: Pack, rows: Rows, into: tuple[_Array | None, ...]) -> None: ...
# with into, added to its arrays
def forward_packed_many(
    calls: list[tuple[Pack, _Array, _Array | None, _Array | None, Any, bool]],
) -> list[tuple[_Array, _Array, _Array | None, tuple[_Array | None, ...]]]: ...
def stack_forward(
    packs: list[Pack], directions: int, x: _Array, h0: _Array | None, c0: _Array | None,
    lengths: _Array | None, masks: list[_Array | None], training: bool,
) -> tuple[_Array, _Array, _Array | None, list[_Array] | None, list[tuple[Any, ...]] | None]: ...
def stack_backward(
    packs: list[Pack], directions: int, xs: list[_Array], lengths: _Array | None,
    buffers: list[tuple[Any, ...]], masks: list[_Array | None], dy: _Array | None,
    dh_n: _Array | None, dc_n: _Array | None, need_dx: bool,
    into: list[tuple[_Array | None, ...]] | None,
) -> tuple[_Array | None, _Array, _Array | None, list[tuple[_Array | None, ...]]]: ...
def backward_packed_many(
    calls: list[tuple[Pack, _Array, Any, tuple[_Array | None, ...], Any, Any, Any]]
    | list[tuple[Pack, _Array, Any, tuple[_Array | None, ...], Any, Any, Any, bool]]
    | list[tuple[Pack, _Array, Any, tuple[_Array | None, ...], Any, Any, Any, bool,
                 tuple[_Array | None, ...] | None]],
) -> list[tuple[_Array | None, ...]]: ...  # backward_packed of each; an 8th item False:
# need_dx=False; a 9th, a tuple of arrays: the weight gradients are added to them (not returned)
def softmax(z: _Array) -> _Array: ...
def softmax_cross_entropy(
    logits: _Array, targets: npt.NDArray[np.int64], ignore_index: int
) -> tuple[float, _Array]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def isa() -> str: ...
def kernel_isa(precision: int) -> str: ...
def set_isa(name: str) -> None: ...
def supported_isas() -> str: ...
def set_thread_runtime(name: str) -> None: ...
def thread_runtime() -> str: ...
def thread_stats() -> dict[str, int]: ...
def digests(arrays: list[Any]) -> list[bytes]: ...
def _test_delays(start_us: int, sync_us: int, sync_at: int) -> None: ...
