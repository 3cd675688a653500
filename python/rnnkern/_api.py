"""Argument checks and result types shared by the compiled kernels and the NumPy reference.

Both backends call these checks first, so they accept and reject exactly the same arguments with
the same messages (the rules are in docs/api.md). Every message starts with the parameter name and
a colon; shape messages come from :func:`shape_message` only, dtype messages contain "dtype".
Nothing large is allocated before the sizes have been checked (:func:`check_size`).
"""
from __future__ import annotations

import collections
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from . import _cells

__all__ = [
    "FLOAT_DTYPES",
    "GATES",
    "GATE_NAMES",
    "NONLINEARITIES",
    "PRECISIONS",
    "Array",
    "Checked",
    "CrossEntropy",
    "LSTMGrads",
    "LSTMOutput",
    "LSTM_EXTRAS",
    "RNNGrads",
    "RNNOutput",
    "check_flag",
    "check_backward",
    "check_forward",
    "check_grad",
    "lstm_grads",
    "check_packed_forward",
    "check_pack_variants",
    "check_weights",
    "check_logits_targets",
    "check_nonlinearity",
    "check_size",
    "check_softmax_input",
    "shape_message",
]

Array = npt.NDArray[Any]


# ----------------------------------------------------------------------------- result types


class RNNOutput(NamedTuple):
    """Result of ``rnn_forward`` and ``gru_forward``."""

    y: Array  # (T, B, H) outputs, zero at padded steps
    h_n: Array  # (B, H) state after each sequence's last valid step
    cache: Any  # opaque; None when training=False


class LSTMOutput(NamedTuple):
    """Result of ``lstm_forward`` (P = H without a projection w_hr)."""

    y: Array  # (T, B, P)
    h_n: Array  # (B, P)
    c_n: Array  # (B, H)
    cache: Any  # opaque; None when training=False


class RNNGrads(NamedTuple):
    """Result of ``rnn_backward`` and ``gru_backward``."""

    dx: Array  # (T, B, I)
    dh0: Array  # (B, H)
    dw_ih: Array  # (G*H, I)
    dw_hh: Array  # (G*H, H)
    db_ih: Array | None  # (G*H,) or None when the forward had no biases
    db_hh: Array | None  # (G*H,) or None


class LSTMGrads(NamedTuple):
    """Result of ``lstm_backward``; with the LSTM variants' gradients appended (lstm_grads)."""

    dx: Array  # (T, B, I)
    dh0: Array  # (B, P)
    dc0: Array  # (B, H)
    dw_ih: Array  # (4H, I)
    dw_hh: Array  # (4H, P)
    db_ih: Array | None  # (4H,) or None
    db_hh: Array | None  # (4H,) or None


#: The LSTM variants' arguments of ``lstm_forward`` in the order ``lstm_backward`` appends their
#: gradients (named "d" + argument), each only when the forward had it (docs/lstm_variants.md).
LSTM_EXTRAS = ("w_hr", "w_peep", "ln_gates", "ln_cell")


@functools.cache
def _lstm_grads_type(extras: tuple[str, ...]) -> type[LSTMGrads]:
    """A named tuple of LSTMGrads' seven fields and then ``extras``; an LSTMGrads subclass that
    pickles as a call of lstm_grads (the class itself is made here, not importable by name)."""
    if not extras:
        return LSTMGrads
    fields = LSTMGrads._fields + extras
    base = collections.namedtuple("LSTMGrads", fields)  # type: ignore[misc]

    def reduce(self: LSTMGrads) -> tuple[Any, ...]:
        return lstm_grads, (tuple(self[:7]), dict(zip(self._fields[7:], self[7:])))

    cls: type[LSTMGrads] = type("LSTMGrads", (base, LSTMGrads),
                                {"__slots__": (), "__reduce__": reduce})
    return cls


def lstm_grads(grads: tuple[Array, Array, Array, Array, Array, Array | None, Array | None],
               extras: dict[str, Array]) -> LSTMGrads:
    """``lstm_backward``'s result: the seven ``grads`` followed by ``extras`` (gradients named
    "d" + a LSTM_EXTRAS name, appended in LSTM_EXTRAS' order); a plain LSTMGrads without extras."""
    names = tuple(f"d{n}" for n in LSTM_EXTRAS if f"d{n}" in extras)
    assert len(names) == len(extras), sorted(extras)
    return _lstm_grads_type(names)(*grads, *(extras[n] for n in names))


class CrossEntropy(NamedTuple):
    """Result of ``softmax_cross_entropy``: the mean loss (a Python float) and its gradient."""

    loss: float
    dlogits: Array  # (N, C), dtype of the logits


# ----------------------------------------------------------------------------- constants

# The cells' gate counts, gate order and rnn_forward's activations: from the core's traits.
GATES, GATE_NAMES, NONLINEARITIES = _cells.GATES, _cells.GATE_NAMES, _cells.NONLINEARITIES
#: Floating dtypes accepted for the data of a call.
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_INT64_MAX = 2**63 - 1
# x86-64 user address space (47 bits): no single buffer can be larger.
_ADDRESS_SPACE = 2**47


def _physical_memory() -> int:
    """Bytes of physical memory, or the address-space bound where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return _ADDRESS_SPACE


_MAX_BUFFER_BYTES = min(_ADDRESS_SPACE, _physical_memory())


# ----------------------------------------------------------------------------- checked arguments


@dataclass(frozen=True)
class Checked:
    """Validated forward arguments: C-contiguous, aligned, native arrays of one float dtype
    (possibly read-only; never written to)."""

    cell: str  # "rnn", "lstm" or "gru"
    T: int
    B: int
    I: int
    H: int
    P: int  # size of h and y: w_hr's rows, else H
    dtype: np.dtype[Any]  # float32 or float64
    x: Array  # (T, B, I)
    h0: Array | None  # (B, P) or None
    c0: Array | None  # (B, H) or None (always None for rnn/gru)
    w_ih: Array  # (G*H, I)
    w_hh: Array  # (G*H, P)
    b_ih: Array | None  # (G*H,) or None
    b_hh: Array | None  # (G*H,) or None
    lengths: Array | None  # (B,) int64 with values in 1..T, or None
    # The LSTM variants (docs/lstm_variants.md), each None when not used:
    w_hr: Array | None = None  # (P, H) projection
    w_peep: Array | None = None  # (3, H) peepholes p_i, p_f, p_o
    ln_gates: Array | None = None  # (2, 4H) layer-norm gains of W_ih x and of W_hh h
    ln_cell: Array | None = None  # (2, H) layer-norm gain and shift of c

    @property
    def G(self) -> int:
        """Number of gate blocks of the cell."""
        return GATES[self.cell]


# ----------------------------------------------------------------------------- message helpers


def _fmt_dims(dims: Sequence[object]) -> str:
    """Format a shape like Python prints a tuple: (3, 5), (7,), ()."""
    inner = ", ".join(str(d) for d in dims)
    return f"({inner},)" if len(dims) == 1 else f"({inner})"


def shape_message(
    name: str,
    symbols: Sequence[str] | None,
    expected: Sequence[int | None],
    got: tuple[int, ...],
    note: str = "",
) -> str:
    """The one formatter of shape errors.

    ``symbols`` names the dimensions (e.g. ("B", "H")) or is None; ``expected`` gives the sizes,
    None where any size is fine (shown by its symbol). Example::

        h0: expected shape (B, H) = (3, 5), got (3, 4)
    """
    if symbols is None:
        text = _fmt_dims([("?" if e is None else e) for e in expected])
    else:
        text = _fmt_dims(symbols)
        if any(e is not None for e in expected):
            shown = [s if e is None else e for s, e in zip(symbols, expected)]
            text += " = " + _fmt_dims(shown)
    return f"{name}: expected shape {text}{note}, got {_fmt_dims(got)}"


def _type_name(value: object) -> str:
    return "None" if value is None else type(value).__name__


def _require_ndarray(name: str, value: object) -> Array:
    """``value`` itself if it is an ndarray, else TypeError (lists, scalars and None included)."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {_type_name(value)}")
    return value


def _native(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The same dtype in native byte order (a big-endian float64 counts as float64)."""
    return dtype if dtype.isnative else dtype.newbyteorder("=")


def _check_float_dtype(name: str, a: Array) -> np.dtype[Any]:
    """The native float dtype of ``a``; TypeError unless float32 or float64."""
    dtype = _native(a.dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: dtype {a.dtype} is not supported, expected float32 or float64")
    return dtype


def _check_same_dtype(name: str, a: Array, dtype: np.dtype[Any], owner: str) -> None:
    """TypeError unless ``a`` has ``dtype`` (``owner`` is the argument that fixed the dtype)."""
    if _native(a.dtype) != dtype:
        raise TypeError(f"{name}: dtype {a.dtype} does not match {owner}'s dtype {dtype}")


def _check_shape(
    name: str,
    a: Array,
    symbols: Sequence[str] | None,
    expected: Sequence[int | None],
    note: str = "",
) -> None:
    """ValueError unless ``a.shape`` matches ``expected`` (None entries match any size)."""
    if a.ndim == len(expected):
        for d, e in zip(a.shape, expected):
            if e is not None and d != e:
                break
        else:
            return
    raise ValueError(shape_message(name, symbols, expected, a.shape, note))


def _contiguous(a: Array, dtype: np.dtype[Any]) -> Array:
    """``a`` as a C-contiguous, aligned, native array of ``dtype``; copies only when needed
    (read-only arrays pass as they are: the compiled core's bindings accept them and nothing
    writes to them)."""
    if a.dtype == dtype and a.flags.c_contiguous and a.flags.aligned:
        return a  # what np.require returns too, without its cost (a few us per array)
    return np.require(a, dtype=dtype, requirements=["C", "A"])


def check_size(name: str, *dims: int, itemsize: int = 8) -> int:
    """Number of elements of a (dims) buffer, after checking it can exist at all.

    OverflowError if its size in bytes does not fit in int64, MemoryError if it is larger than the
    machine's physical memory (or the 47-bit address space). Call before allocating anything.
    """
    count = 1
    for d in dims:
        count *= int(d)
    nbytes = count * itemsize
    if nbytes <= _MAX_BUFFER_BYTES:
        return count
    shape = " x ".join(str(int(d)) for d in dims)
    if nbytes > _INT64_MAX:
        raise OverflowError(f"{name}: a buffer of {shape} elements of {itemsize} bytes "
                            f"({nbytes} bytes) overflows int64")
    raise MemoryError(f"{name}: a buffer of {shape} elements of {itemsize} bytes "
                      f"({nbytes} bytes) exceeds the memory of this machine "
                      f"({_MAX_BUFFER_BYTES} bytes)")


# ----------------------------------------------------------------------------- recurrent cells


def _gate_note(cell: str, a: Array, H: int) -> str:
    """If weights ``a`` have the wrong number of gate rows, explain how many ``cell`` expects
    and name the cell the given rows would fit; else ""."""
    G = GATES[cell]
    if a.ndim != 2 or a.shape[0] == G * H:
        return ""
    rows = a.shape[0]
    gates = ", ".join(GATE_NAMES[cell])
    note = f" ({cell} has G = {G} gate block{'s' if G > 1 else ''}: {gates}"
    if H > 0 and rows % H == 0:
        others = [c for c, g in GATES.items() if g == rows // H and c != cell]
        if others:
            note += f"; {rows} = {rows // H}*H rows fit {' or '.join(others)}"
    return note + ")"


def _check_lengths(lengths: object, T: int, B: int) -> Array | None:
    """None, or ``lengths`` as a contiguous int64 (B,) array after checking 1 <= value <= T."""
    if lengths is None:
        return None
    a = _require_ndarray("lengths", lengths)
    if a.dtype.kind not in "iu":
        raise TypeError(f"lengths: dtype {a.dtype} is not an integer dtype")
    _check_shape("lengths", a, ("B",), (B,))
    if B > 0:
        lo, hi = int(a.min()), int(a.max())
        if lo < 1 or hi > T:
            raise ValueError(f"lengths: every value must be in 1..T = 1..{T}, "
                             f"got min {lo}, max {hi}")
    return _contiguous(a, np.dtype(np.int64))


def _check_weights(cell: str, dtype: np.dtype[Any] | None, owner: str, I: int | None,
                   w_ih: object, w_hh: object, b_ih: object, b_hh: object,
                   projected: bool = False) -> tuple[Array, Array, Array | None, Array | None]:
    """w_ih (G*H, I), w_hh (G*H, H), b_ih/b_hh (G*H,) both arrays or both None, checked, as given.

    ``dtype`` is the call's (fixed by ``owner``), None: w_hh's. ``I`` None: any input size.
    ``projected`` (an LSTM with w_hr): w_hh is (G*H, P), H taken from its rows.
    """
    G = GATES[cell]
    whh = _require_ndarray("w_hh", w_hh)
    if dtype is None:
        dtype, owner = _check_float_dtype("w_hh", whh), "w_hh"

    def array(name: str, value: object) -> Array:
        a = _require_ndarray(name, value)
        _check_same_dtype(name, a, dtype, owner)
        return a

    whh = array("w_hh", whh)
    if projected:
        _check_shape("w_hh", whh, ("G*H", "P"), (None, None))
        if whh.shape[0] % G:
            raise ValueError(shape_message("w_hh", ("G*H", "P"), (None, None), whh.shape,
                                           f" with G*H a multiple of G = {G} ({cell})"))
        H = whh.shape[0] // G
    else:
        _check_shape("w_hh", whh, ("G*H", "H"), (None, None))
        H = whh.shape[1]
        _check_shape("w_hh", whh, ("G*H", "H"), (G * H, H), _gate_note(cell, whh, H))
    wih = array("w_ih", w_ih)
    _check_shape("w_ih", wih, ("G*H", "I"), (G * H, I), _gate_note(cell, wih, H))
    if (b_ih is None) != (b_hh is None):
        missing, given = ("b_ih", "b_hh") if b_ih is None else ("b_hh", "b_ih")
        raise ValueError(f"{missing}: None, but {given} is given: the two biases must be given "
                         f"together (both arrays or both None)")
    biases: list[Array | None] = []
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            b = array(name, b)
            _check_shape(name, b, ("G*H",), (G * H,))
        biases.append(b)
    return wih, whh, biases[0], biases[1]


def check_weights(cell: str, w_ih: object, w_hh: object, b_ih: object, b_hh: object,
                  projected: bool = False) -> tuple[Array, Array, Array | None, Array | None]:
    """Validate the weights of one cell for packing (w_hh fixes the dtype, w_ih the input size;
    ``projected``: an LSTM with w_hr, w_hh (G*H, P)); returns them as contiguous arrays, the same
    messages as :func:`check_forward`."""
    wih, whh, bih, bhh = _check_weights(cell, None, "w_hh", None, w_ih, w_hh, b_ih, b_hh,
                                        projected)
    dtype = _native(whh.dtype)
    check_size("w_ih", *wih.shape, itemsize=dtype.itemsize)
    check_size("w_hh", *whh.shape, itemsize=dtype.itemsize)
    return (_contiguous(wih, dtype), _contiguous(whh, dtype),
            None if bih is None else _contiguous(bih, dtype),
            None if bhh is None else _contiguous(bhh, dtype))


def check_forward(
    cell: str,
    x: object,
    h0: object,
    c0: object,
    w_ih: object,
    w_hh: object,
    b_ih: object,
    b_hh: object,
    lengths: object,
    *,
    w_hr: object = None,
    w_peep: object = None,
    ln_gates: object = None,
    ln_cell: object = None,
) -> Checked:
    """Validate the arguments of ``{cell}_forward`` (pass c0=None for rnn and gru).

    x (T, B, I) float32/float64 fixes the dtype; H is w_hh's second dimension; w_ih (G*H, I),
    w_hh (G*H, H), b_ih/b_hh (G*H,) both arrays or both None, h0/c0 (B, H) or None, lengths
    None or an integer (B,) array with values in 1..T. The LSTM variants (None: not used):
    w_hr (P, H), which makes w_hh (4H, P) and h0 (B, P); w_peep (3, H); ln_gates (2, 4H) and
    ln_cell (2, H), both or neither. Raises TypeError/ValueError naming the argument,
    OverflowError/MemoryError for impossible sizes; returns contiguous arrays.
    """
    if cell not in GATES:
        raise ValueError(f"cell: expected one of {sorted(GATES)}, got {cell!r}")
    variants = {"w_hr": w_hr, "w_peep": w_peep, "ln_gates": ln_gates, "ln_cell": ln_cell}
    for name, value in variants.items():
        if value is not None and cell != "lstm":
            raise ValueError(f"{name}: an LSTM variant, {cell} takes none")
    xa = _require_ndarray("x", x)
    dtype = _check_float_dtype("x", xa)
    _check_shape("x", xa, ("T", "B", "I"), (None, None, None))
    _check_steps(xa)
    wih, whh, bih, bhh = _check_weights(cell, dtype, "x", xa.shape[2], w_ih, w_hh, b_ih, b_hh,
                                        projected=w_hr is not None)
    T, B, I = xa.shape
    G = GATES[cell]
    H, P = (whh.shape[0] // G, whh.shape[1]) if w_hr is not None else (whh.shape[1],) * 2
    checked = _check_lstm_variants(dtype, H, P, whh.shape, variants)
    xc, h0c, c0c, lens = _check_run(cell, xa, dtype, H, h0, c0, lengths, P)
    itemsize = dtype.itemsize
    check_size("w_ih", G * H, I, itemsize=itemsize)
    check_size("w_hh", G * H, P, itemsize=itemsize)

    def contiguous(a: Array | None) -> Array | None:
        return None if a is None else _contiguous(a, dtype)

    return Checked(
        cell=cell, T=T, B=B, I=I, H=H, P=P, dtype=dtype, x=xc, h0=h0c, c0=c0c,
        w_ih=_contiguous(wih, dtype), w_hh=_contiguous(whh, dtype),
        b_ih=contiguous(bih), b_hh=contiguous(bhh), lengths=lens, **checked,
    )


def check_pack_variants(w_hr: object, w_peep: object, w_hh: Array, ln_gates: object = None,
                        ln_cell: object = None) -> tuple[Array | None, ...]:
    """(w_hr (P, H), w_peep (3, H), ln_gates (2, 4H), ln_cell (2, H)) of a pack, each None or
    checked against the checked w_hh ((4H, P) with w_hr, else (4H, H)) as
    :func:`check_forward` does; contiguous."""
    H, P = ((w_hh.shape[0] // 4, w_hh.shape[1]) if w_hr is not None else (w_hh.shape[1],) * 2)
    checked = _check_lstm_variants(_native(w_hh.dtype), H, P, w_hh.shape, {
        "w_hr": w_hr, "w_peep": w_peep, "ln_gates": ln_gates, "ln_cell": ln_cell})
    return tuple(checked[n] for n in LSTM_EXTRAS)


def lstm_variant(w_hr: object, w_peep: object, ln_gates: object = None) -> str:
    """A packed LSTM's ``variant``: the names of those it has of "projection", "peepholes" and
    "layer-norm", or "" for none."""
    return " ".join(n for n, a in (("projection", w_hr), ("peepholes", w_peep),
                                   ("layer-norm", ln_gates)) if a is not None)


def check_projection(w_hr: Array | None) -> None:
    """ValueError for a projection to nothing, w_hr (0, H): PyTorch's proj_size 0 means none."""
    if w_hr is not None and w_hr.shape[0] == 0:
        raise ValueError(shape_message("w_hr", ("P", "H"), (None, w_hr.shape[1]), w_hr.shape,
                                       " with P >= 1"))


def _check_lstm_variants(dtype: np.dtype[Any], H: int, P: int, w_hh_shape: tuple[int, ...],
                         variants: dict[str, object]) -> dict[str, Array | None]:
    """The LSTM variants' arguments (``variants``: name -> value or None) checked against the
    hidden size H and output size P, as contiguous arrays of ``dtype`` or None."""
    shapes = {"w_hr": (("P", "H"), (P, H)), "w_peep": (("3", "H"), (3, H)),
              "ln_gates": (("2", "4H"), (2, 4 * H)), "ln_cell": (("2", "H"), (2, H))}
    note = f" (H and P from w_hh's shape (4H, P) = {_fmt_dims(w_hh_shape)})"
    if (variants["ln_gates"] is None) != (variants["ln_cell"] is None):
        missing, given = (("ln_gates", "ln_cell") if variants["ln_gates"] is None
                          else ("ln_cell", "ln_gates"))
        raise ValueError(f"{missing}: None, but {given} is given: layer normalization needs "
                         f"both (both arrays or both None)")
    checked: dict[str, Array | None] = {}
    for name, value in variants.items():
        if value is not None:
            a = _require_ndarray(name, value)
            _check_same_dtype(name, a, dtype, "x")
            symbols, expected = shapes[name]
            _check_shape(name, a, symbols, expected, note if name == "w_hr" else "")
            value = _contiguous(a, dtype)
        checked[name] = value
    return checked


def _check_steps(xa: Array) -> None:
    """ValueError unless x (T, B, I) has T >= 1."""
    if xa.shape[0] == 0:
        raise ValueError(shape_message("x", ("T", "B", "I"), (None, *xa.shape[1:]), xa.shape,
                                       " with T >= 1"))


def _check_run(cell: str, xa: Array, dtype: np.dtype[Any], H: int, h0: object, c0: object,
               lengths: object,
               P: int | None = None) -> tuple[Array, Array | None, Array | None, Array | None]:
    """x (T, B, I) of ``dtype`` (its shape checked), h0 (B, P) (P = H unless given), c0 (B, H)
    or None and lengths checked; returned contiguous (lengths as int64)."""
    T, B, I = xa.shape
    if c0 is not None and cell != "lstm":
        raise ValueError(f"c0: only lstm has a cell state, {cell} takes none")
    P = H if P is None else P
    states: list[Array | None] = []
    for name, value, symbols, size in (("h0", h0, ("B", "H" if P == H else "P"), P),
                                       ("c0", c0, ("B", "H"), H)):
        if value is not None:
            value = _require_ndarray(name, value)
            _check_same_dtype(name, value, dtype, "x")
            _check_shape(name, value, symbols, (B, size))
            value = _contiguous(value, dtype)
        states.append(value)
    checked_lengths = _check_lengths(lengths, T, B)
    # The largest buffers either backend makes: copies of x, per-step gates.
    check_size("x", T, B, I, itemsize=dtype.itemsize)
    check_size("cache (training=True)", T + 1, B, GATES[cell] * H + H,
               itemsize=dtype.itemsize)
    return _contiguous(xa, dtype), states[0], states[1], checked_lengths


def check_packed_forward(cell: str, dtype: np.dtype[Any], I: int, H: int, x: object,
                         h0: object, c0: object, lengths: object, P: int | None = None
                         ) -> tuple[Array, Array | None, Array | None, Array | None]:
    """Validate the arguments of a forward with packed weights of ``dtype`` and sizes I, H (and
    P, the size of h, with a projection): x (T, B, I), h0 (B, P), c0 (B, H) or None, lengths;
    the messages of :func:`check_forward`."""
    xa = _require_ndarray("x", x)
    _check_same_dtype("x", xa, dtype, "the packed weights")
    _check_shape("x", xa, ("T", "B", "I"), (None, None, I))
    _check_steps(xa)
    return _check_run(cell, xa, dtype, H, h0, c0, lengths, P)


def check_nonlinearity(nonlinearity: object) -> str:
    """``nonlinearity`` if it is one of NONLINEARITIES (TypeError if not a str, else ValueError)."""
    if not isinstance(nonlinearity, str):
        raise TypeError(f"nonlinearity: expected a str, got {_type_name(nonlinearity)}")
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity: expected one of {', '.join(NONLINEARITIES)}, "
                         f"got {nonlinearity!r}")
    return nonlinearity


#: The products' precisions (``precision=`` of the forwards): "float" computes in the arrays'
#: own dtype; "bf16" (float32 arrays) rounds both operands of every product to bfloat16 and sums
#: in float32; "int8" (float32 arrays, inference only) quantizes them (weights per row to 7-bit
#: int8, the other operand per row to u8 with a zero point) and sums exactly (docs/precision.md).
PRECISIONS = ("float", "bf16", "int8")
#: Their ids in the compiled core (rnnkern::Precision).
PRECISION_IDS = {"float": 0, "bf16": 1, "int8": 2}
#: Quantized weights are in [-INT8_WMAX, INT8_WMAX] (7 bits: AVX2's u8 x s8 pair sums cannot
#: saturate); activations in [0, 255].
INT8_WMAX = 63


def check_precision(precision: object, dtype: np.dtype[Any], training: object = False) -> str:
    """``precision`` if it is one of PRECISIONS and fits the arrays' ``dtype`` (TypeError if not a
    str or bf16/int8 with float64 arrays, ValueError if unknown or int8 with ``training``)."""
    if not isinstance(precision, str):
        raise TypeError(f"precision: expected a str, got {_type_name(precision)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(map(repr, PRECISIONS))}, got "
                         f"{precision!r}")
    if precision != "float" and dtype != np.float32:
        raise TypeError(f"precision: {precision!r} takes float32 arrays, got dtype {dtype}")
    if precision == "int8" and training:
        raise ValueError("precision: 'int8' is inference only, pass training=False (train in "
                         "'float' or 'bf16')")
    return precision


def round_bf16(a: Array) -> Array:
    """float32 ``a`` rounded to bfloat16 (to nearest, ties to even; NaN stays NaN), as float32:
    what a bf16 product takes of each operand."""
    a = np.asarray(a, dtype=np.float32)
    u = a.view(np.uint32).astype(np.uint64)  # (...) bit patterns, room for the carry
    r = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)
    return np.where(np.isnan(a), a, r)


def round_int8(a: Array, weight: bool = False) -> Array:
    """float32 ``a`` (..., K) as the int8 products take it, dequantized to float32: each row
    (last axis) quantized as the kernels do (docs/precision.md, "int8"), with float32 operations:

    - ``weight``: symmetric, m = max|row|, q = clip(rint(a * (63 / m)), -63, 63), value
      q * (m / 63);
    - else asymmetric u8: lo = min(0, min row), hi = max(0, max row), r = hi - lo, inv = 255 / r,
      zp = clip(rint(-lo * inv), 0, 255), q = clip(rint(a * inv) + zp, 0, 255), value
      (q - zp) * (r / 255).

    A zero row stays zero; a row with a NaN or an infinity becomes NaN.
    """
    a = np.asarray(a, dtype=np.float32)
    finite = np.isfinite(a).all(axis=-1, keepdims=True)  # (..., 1)
    a0 = np.where(finite, a, np.float32(0))  # (..., K)
    zero = np.float32(0)
    lo = a0.min(axis=-1, keepdims=True, initial=zero)  # (..., 1) min(0, min row)
    hi = a0.max(axis=-1, keepdims=True, initial=zero)
    with np.errstate(divide="ignore", invalid="ignore"):
        if weight:
            m = np.maximum(hi, -lo)
            q = np.clip(np.rint(a0 * (np.float32(INT8_WMAX) / m)), -INT8_WMAX, INT8_WMAX)
            value = q * (m / np.float32(INT8_WMAX))
            empty = m == 0
        else:
            r = hi - lo
            inv = np.float32(255) / r
            zp = np.clip(np.rint(-lo * inv), 0, 255)
            q = np.clip(np.rint(a0 * inv) + zp, 0, 255)
            value = (q - zp) * (r / np.float32(255))
            empty = r == 0
    out = np.where(finite, np.where(empty, zero, value), np.float32(np.nan))
    return out.astype(np.float32, copy=False)


def check_flag(name: str, value: object) -> bool:
    """``value`` as a bool if it is a Python or NumPy bool, else TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {_type_name(value)}")
    return bool(value)


def check_grad(
    name: str,
    g: object,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    symbols: Sequence[str] | None = None,
) -> Array | None:
    """None, or the incoming gradient ``g`` as a contiguous array of exactly ``shape``/``dtype``.

    TypeError if ``g`` is not an ndarray or has another dtype than the forward's ``dtype``,
    ValueError if its shape differs (``symbols`` names the dimensions in the message).
    """
    if g is None:
        return None
    a = _require_ndarray(name, g)
    dtype = np.dtype(dtype)
    _check_same_dtype(name, a, dtype, "the forward")
    _check_shape(name, a, symbols, shape)
    return _contiguous(a, dtype)


def check_backward(cell: str, cache: object, cache_type: type[Any], dy: object, dh_n: object,
                   dc_n: object = None) -> tuple[Any, Array | None, Array | None, Array | None]:
    """Validate the arguments of ``{cell}_backward`` (both backends, the same messages).

    ``cache`` must be a ``cache_type`` (the backend's cache: attributes cell, shape (T, B, I, H),
    output_size P (H unless projected) and dtype) made by ``{cell}_forward``; dy (T, B, P), dh_n
    (B, P) and dc_n (B, H) (dc_n: lstm only)
    None or arrays of the forward's dtype. Returns (cache, dy, dh_n, dc_n), the gradients
    contiguous or None.
    """
    function = f"{cell}_backward"
    if cache is None:
        raise ValueError(f"cache: None; {function} needs the cache of a {cell}_forward run with "
                         f"training=True")
    if not isinstance(cache, cache_type):
        raise TypeError(f"cache: expected the cache of this module's {cell}_forward, got "
                        f"{type(cache).__name__}")
    if cache.cell != cell:
        raise TypeError(f"cache: made by {cache.cell}_forward, {function} needs the cache of "
                        f"{cell}_forward")
    T, B, _, H = cache.shape
    P = cache.output_size  # H unless projected
    dtype = cache.dtype
    p = "H" if P == H else "P"
    return (cache, check_grad("dy", dy, (T, B, P), dtype, ("T", "B", p)),
            check_grad("dh_n", dh_n, (B, P), dtype, ("B", p)),
            check_grad("dc_n", dc_n, (B, H), dtype, ("B", "H")))


# ----------------------------------------------------------------------------- softmax and loss


def check_softmax_input(z: object) -> Array:
    """``z`` (..., C) float32/float64 with ndim >= 1, as a contiguous array."""
    a = _require_ndarray("z", z)
    dtype = _check_float_dtype("z", a)
    if a.ndim < 1:
        raise ValueError(shape_message("z", ("...", "C"), (None, None), a.shape,
                                       " with ndim >= 1"))
    check_size("z", *a.shape, itemsize=dtype.itemsize)
    return _contiguous(a, dtype)


def check_logits_targets(
    logits: object, targets: object, ignore_index: object
) -> tuple[Array, Array]:
    """Validate ``softmax_cross_entropy``'s arguments.

    logits (N, C) float32/float64 with C >= 1; targets an integer (N,) array with values in
    0..C-1 or equal to ignore_index (an int). Returns (contiguous logits, int64 targets).
    """
    la = _require_ndarray("logits", logits)
    dtype = _check_float_dtype("logits", la)
    _check_shape("logits", la, ("N", "C"), (None, None))
    N, C = la.shape
    if C == 0:
        raise ValueError(shape_message("logits", ("N", "C"), (N, None), la.shape,
                                       " with C >= 1"))
    if not isinstance(ignore_index, (int, np.integer)) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index: expected an int, got {_type_name(ignore_index)}")
    ignore = int(ignore_index)
    if not -(2**63) <= ignore <= _INT64_MAX:
        raise ValueError(f"ignore_index: {ignore} does not fit in int64")
    ta = _require_ndarray("targets", targets)
    if ta.dtype.kind not in "iu":
        raise TypeError(f"targets: dtype {ta.dtype} is not an integer dtype")
    _check_shape("targets", ta, ("N",), (N,))
    check_size("logits", N, C, itemsize=dtype.itemsize)
    if N > 0:
        # Python ints compare exactly for every integer dtype (uint64 included).
        valid = ((ta >= 0) & (ta < C)) | (ta == ignore)
        if not valid.all():
            bad = int(np.flatnonzero(~valid)[0])
            raise ValueError(f"targets: every value must be in 0..C-1 = 0..{C - 1} or equal "
                             f"ignore_index = {ignore}, got {int(ta[bad])} at index {bad}")
    # Every value is now in 0..C-1 or equals ignore_index, which fits int64: the cast is exact.
    targets64 = _contiguous(ta, np.dtype(np.int64))
    return _contiguous(la, dtype), targets64
