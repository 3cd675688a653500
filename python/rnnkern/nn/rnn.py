"""Recurrent layer modules (`RNN`, `LSTM`, `GRU`) built on rnnkern's functional API.

A layer stacks `num_layers` layers of one or two directions. Its parameters use PyTorch's names
and layout, so `layer.load_state_dict(torch_module.state_dict())` loads a `torch.nn.RNN/LSTM/GRU`
unchanged and the layer then computes what the PyTorch module computes (packed sequences given
as `lengths`). Backward is explicit: `layer.backward(dy, dstate)` after a training forward.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np
import numpy.typing as npt

from .. import _functional as F
from .. import _stack
from .._api import _check_lengths, check_flag, check_nonlinearity, check_precision, shape_message
from .linear import ParamModule, WeightPacks, _check_dtype, _check_size, _uniform

__all__ = ["GRU", "LSTM", "RNN"]

Array = npt.NDArray[Any]  # any numpy array (the dtype is checked at run time)
# A layer's state: h (L*D, B, H) for RNN and GRU, (h, c) for LSTM (h (L*D, B, P) with a
# projection).
State = Union[Array, tuple[Array, Array]]
# The parameters of one layer and direction: w_ih, w_hh, b_ih, b_hh (biases None without bias),
# then an LSTM's w_hr, w_peep, ln_gates, ln_cell (each None without its variant).
Weights = tuple[Array, Array, Optional[Array], Optional[Array], Optional[Array],
                Optional[Array], Optional[Array], Optional[Array]]

# PyTorch's order within a layer and direction, then the LSTM variants' parameters (named as
# the functional keywords) in the order lstm_backward returns their gradients
_PARAM_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "weight_peep",
                "ln_gates", "ln_cell")


class _Recurrent(ParamModule):
    """A stacked, optionally bidirectional recurrent layer; subclasses supply the cell.

    A subclass sets `_gates` (G) and `_has_cell` (whether the state carries c) and implements
    `_make_pack` with one functional call.

    The parameters are read-only arrays, packed for the kernels once and used until one of them
    changes: to change one in place, make it writeable first (`rnnkern.optim` and
    `load_state_dict` do); the next call sees the writeable flag, packs again and makes it
    read-only again (`WeightPacks`). Writing to a read-only parameter raises NumPy's ValueError.

    Arguments as `torch.nn.RNN/LSTM/GRU`: input_size I, hidden_size H, num_layers L, bias,
    batch_first, dropout (probability, on each layer's output but the last's, training only),
    bidirectional (D = 2 directions, outputs concatenated on the feature axis); plus dtype
    (float32 or float64), seed (int, None or numpy Generator: initialization, dropout masks) and
    precision of the kernels' products ("float": the dtype's own; "bf16": float32 parameters
    stored and multiplied as bfloat16, sums and gate math in float32, training included; "int8":
    inference only, training=True raises; see docs/precision.md).
    Parameters are in `params` and their gradients in `grads` (`ParamModule`: zero_grad,
    state_dict, load_state_dict from arrays or torch tensors), keyed by PyTorch's names
    (weight_ih_l0 (G*H, I), weight_hh_l0 (G*H, H), bias_ih_l0, bias_hh_l0 (G*H,), ..._reverse),
    initialized uniform in +-1/sqrt(H) like PyTorch's.
    """

    _gates: int = 1  # G: gate blocks of H rows in w_ih, w_hh, b_ih, b_hh
    _has_cell: bool = False  # True when the state is (h, c)
    proj_size: int = 0  # LSTM: P, the size of h (weight_hr (P, H)); 0: no projection
    peephole: bool = False  # LSTM: peepholes weight_peep (3, H)
    layer_norm: bool = False  # LSTM: layer norm ln_gates (2, 4H), ln_cell (2, H)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        dtype: npt.DTypeLike = np.float32,
        seed: None | int | np.random.Generator = None,
        precision: str = "float",
    ) -> None:
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)
        self.num_layers = _check_size("num_layers", num_layers)
        if (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
                or not 0.0 <= dropout <= 1.0):
            raise ValueError(f"dropout: expected a number in [0, 1], got {dropout!r}")
        self.dtype = _check_dtype(dtype)
        self.precision = check_precision(precision, self.dtype)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self._rng = np.random.default_rng(seed)  # initialization, then dropout masks
        self._saved: _stack.Saved | None = None
        # PyTorch's order and init: per layer and direction w_ih, w_hh, b_ih, b_hh ~ U(-k, k).
        k = 1.0 / math.sqrt(self.hidden_size)
        params: dict[str, Array] = {}
        for layer in range(self.num_layers):
            for direction in range(self._directions):
                for name, shape in zip(self._names(layer, direction), self._shapes(layer)):
                    if (name.startswith("bias") and not self.bias) or not all(shape):
                        continue  # no biases; no LSTM variant's parameters without it
                    params[name] = (_layer_norm_init(name, shape, self.dtype)
                                    if name.startswith("ln_")
                                    else _uniform(self._rng, k, name, shape, self.dtype))
        self._init_params(params, read_only=True)
        self._packs = WeightPacks(self, self._make_pack)

    # -- the cell, supplied by subclasses -------------------------------------------------------

    def _make_pack(self, weights: Weights) -> F.PackedWeights:
        """One (layer, direction)'s weights packed (`rnnkern.{cell}_pack`)."""
        raise NotImplementedError

    def _extra_repr(self) -> list[str]:
        """Cell options for `__repr__` that differ from their defaults."""
        return []

    # -- structure ------------------------------------------------------------------------------

    @property
    def _directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _names(self, layer: int, direction: int) -> tuple[str, ...]:
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        return tuple(kind + suffix for kind in _PARAM_KINDS)

    def _grad_names(self, k: int) -> tuple[str, ...]:
        """(layer, direction) k's parameter names in the kernels' gradient order: weight_ih,
        weight_hh and the biases (even without bias), then the variants' present ones."""
        names = self._names(*divmod(k, self._directions))
        return names[:4] + tuple(n for n in names[4:] if n in self.params)

    @property
    def _out_size(self) -> int:
        """P, the size of h and of each direction's output: proj_size, or H without it."""
        return self.proj_size or self.hidden_size

    def _shapes(self, layer: int) -> tuple[tuple[int, ...], ...]:
        """Each parameter's shape, in _PARAM_KINDS' order (a variant's 0 rows: not used)."""
        H = self.hidden_size
        gh, out = self._gates * H, self._out_size
        fan_in = self.input_size if layer == 0 else self._directions * out
        ln = 2 * self.layer_norm
        return ((gh, fan_in), (gh, out), (gh,), (gh,), (self.proj_size, H),
                (3 * self.peephole, H), (ln, gh), (ln, H))

    def _weights(self, layer: int, direction: int) -> Weights:
        w_ih, w_hh, b_ih, b_hh, *variants = (self.params.get(n)
                                             for n in self._names(layer, direction))
        assert w_ih is not None and w_hh is not None and len(variants) == 4
        return (w_ih, w_hh, b_ih, b_hh, *variants)  # type: ignore[return-value]

    # -- argument checks ------------------------------------------------------------------------

    def _time_major(self, name: str, a: object, features: int, symbol: str,
                    steps_batch: tuple[int, int] | None = None) -> Array:
        """Check a (T, B, F) array ((B, T, F) if batch_first) and return it time-major."""
        arr = self._check_input(name, a)
        t, b = steps_batch if steps_batch is not None else (None, None)
        symbols, expected = ((("B", "T", symbol), (b, t, features)) if self.batch_first
                             else (("T", "B", symbol), (t, b, features)))
        if arr.ndim != 3 or any(e is not None and d != e for d, e in zip(arr.shape, expected)):
            raise ValueError(shape_message(name, symbols, expected, arr.shape))
        tm = arr.transpose(1, 0, 2) if self.batch_first else arr  # (T, B, F)
        if tm.shape[0] == 0:
            raise ValueError(shape_message(name, symbols, expected, arr.shape, " with T >= 1"))
        return tm

    def _check_state(self, name: str, state: object, batch: int
                     ) -> tuple[Array | None, Array | None]:
        """Split a state (h or (h, c), each (L*D, B, H) or None; h (L*D, B, P) with a
        projection) into (h, c)."""
        if state is None:
            return None, None
        if self._has_cell:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError(f"{name}: expected a tuple (h, c) or None, got "
                                f"{type(state).__name__}")
            parts: Sequence[object] = state
            names: tuple[str, ...] = (f"{name}[0]", f"{name}[1]")
        else:
            parts, names = (state,), (name,)
        out: list[Array | None] = []
        for i, (part_name, part) in enumerate(zip(names, parts)):
            if part is None:
                out.append(None)
                continue
            size, symbol = ((self._out_size, "P") if i == 0 and self.proj_size
                            else (self.hidden_size, "H"))
            want = (self.num_layers * self._directions, batch, size)
            arr = self._check_input(part_name, part)
            if arr.shape != want:
                raise ValueError(shape_message(part_name, ("L*D", "B", symbol), want, arr.shape))
            out.append(arr)
        return out[0], (out[1] if self._has_cell else None)

    # -- forward and backward -------------------------------------------------------------------

    def __call__(self, x: Array, state: State | None = None, lengths: Any = None,
                 training: bool = True) -> tuple[Array, State]:
        """Run the layer.

        x: (T, B, input_size) ((B, T, input_size) if batch_first), the layer's dtype.
        state: initial h (L*D, B, H), for LSTM (h, c) (h (L*D, B, P) with proj_size P); None
            means zeros.
        lengths: None or ints (B,) in 1..T, any order (PyTorch's packed sequences).
        training: keep what backward needs (replacing the previous forward's) and apply dropout
            between layers; False keeps nothing (a later backward raises RuntimeError).
        Returns y (T, B, D*H) ((B, T, D*H) if batch_first; D*P with a projection) and the final
        state like `state`.
        """
        training = check_flag("training", training)
        xt = self._time_major("x", x, self.input_size, "I")  # (T, B, I)
        steps, batch = xt.shape[:2]
        h0, c0 = self._check_state("state", state, batch)
        if isinstance(lengths, (list, tuple)):  # a list of ints is accepted as well
            lengths = np.asarray(lengths, dtype=np.int64 if len(lengths) == 0 else None)
        lens = _check_lengths(lengths, steps, batch)  # (B,) int64 or None
        xc = np.ascontiguousarray(xt)  # (T, B, I)
        if training and xc is x:  # the saved forward keeps its own x
            xc = xc.copy()
        n_dir, n_layers = self._directions, self.num_layers
        packs = [self._packs.get(k, self._weights(*divmod(k, n_dir)))._pack
                 for k in range(n_layers * n_dir)]
        masks: list[Array] = []  # L-1 (T, B, D*P)
        if training and self.dropout > 0.0:
            masks = _stack.dropout_masks(self._rng, self.dropout, n_layers,
                                         (steps, batch, n_dir * self._out_size), self.dtype)
        y, h_n, c_n, self._saved = _stack.forward(packs, n_dir, xc, h0, c0, lens, masks,
                                                  training)
        y_out = np.ascontiguousarray(y.transpose(1, 0, 2)) if self.batch_first else y
        final: State = (h_n, c_n) if c_n is not None else h_n
        return y_out, final

    def backward(self, dy: Array | None, dstate: State | None = None
                 ) -> tuple[Array, State]:
        """Backward through the last training forward; adds the parameter gradients into grads.

        dy: gradient of y, shaped like y, or None (only the final state receives a gradient).
        dstate: gradient of the final state, shaped like it (h or (h, c); None parts are zero).
        Returns dx shaped like x and the gradient of the initial state shaped like the state.
        May be called more than once; every call adds into `grads` again. The gradients are those
        of the forward that ran, even if the parameters changed since (its cache keeps its packed
        weights and its own copy of x).
        """
        saved = self._saved
        if saved is None:
            raise RuntimeError(
                "backward: no saved forward; call the layer with training=True first")
        steps, batch = saved.xs[0].shape[:2]
        n_dir = self._directions
        d_out = None if dy is None else self._time_major(
            "dy", dy, n_dir * self._out_size, "D*P" if self.proj_size else "D*H",
            (steps, batch))  # (T, B, D*P)
        dh_n, dc_n = self._check_state("dstate", dstate, batch)
        # The kernels add the weight gradients into `grads` (as (dw_ih, dw_hh, db_ih, db_hh
        # (None without bias)), then the variants' present ones), unless an array there is not
        # one they can write (then they are returned and added here).
        into = [tuple(self.grads.get(n) for n in self._grad_names(k))
                for k in range(len(saved.packs))]
        direct = all(g is None or (g.flags.c_contiguous and g.flags.writeable
                                   and g.dtype == self.dtype)
                     for gs in into for g in gs)
        dx, dh0, dc0, weight_grads = _stack.backward(saved, d_out, dh_n, dc_n,
                                                     into=into if direct else None)
        assert dx is not None  # need_dx defaults to True
        for k, dws in enumerate(weight_grads):  # empty tuples when added to directly
            for name, g in zip(self._grad_names(k), dws):
                if g is not None:
                    self.grads[name] += g
        dx_out = np.ascontiguousarray(dx.transpose(1, 0, 2)) if self.batch_first else dx
        dstate0: State = (dh0, dc0) if dc0 is not None else dh0
        return dx_out, dstate0

    # -- display -------------------------------------------------------------------------------

    def __repr__(self) -> str:
        parts = [str(self.input_size), str(self.hidden_size)]
        if self.num_layers != 1:
            parts.append(f"num_layers={self.num_layers}")
        if not self.bias:
            parts.append("bias=False")
        if self.batch_first:
            parts.append("batch_first=True")
        if self.dropout != 0.0:
            parts.append(f"dropout={self.dropout}")
        if self.bidirectional:
            parts.append("bidirectional=True")
        if self.precision != "float":
            parts.append(f"precision='{self.precision}'")
        parts.extend(self._extra_repr())
        if self.dtype != np.dtype(np.float32):
            parts.append(f"dtype={self.dtype}")
        return f"{type(self).__name__}({', '.join(parts)})"


def _layer_norm_init(name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Array:
    """A layer norm's parameters at the start, a plain normalized LSTM: ln_gates (2, 4H) two
    gains, 1; ln_cell (2, H) a gain, 1, and a shift, 0."""
    a = np.ones(shape, dtype)
    if name.startswith("ln_cell"):
        a[1] = 0
    return a


class RNN(_Recurrent):
    """Elman RNN: h' = f(W_ih x + b_ih + W_hh h + b_hh), f = nonlinearity ("tanh", "relu",
    "sigmoid"). Parameters like `torch.nn.RNN`; see `_Recurrent` for the other arguments."""

    _gates = 1
    _has_cell = False

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", **kwargs: Any) -> None:
        self.nonlinearity = check_nonlinearity(nonlinearity)
        super().__init__(input_size, hidden_size, num_layers, **kwargs)

    def _make_pack(self, weights: Weights) -> F.PackedWeights:
        return F.rnn_pack(*weights[:4], nonlinearity=self.nonlinearity, precision=self.precision)

    def _extra_repr(self) -> list[str]:
        return [] if self.nonlinearity == "tanh" else [f"nonlinearity='{self.nonlinearity}'"]


class LSTM(_Recurrent):
    """LSTM (gates i, f, g, o), parameters like `torch.nn.LSTM`; the state is (h, c).

    proj_size P > 0 (< hidden_size, as torch): h_t = W_hr (o * tanh(c_t)) of size P (LSTMP,
    `torch.nn.LSTM(proj_size=P)`): parameters weight_hr_l0 (P, H), ..., weight_hh (4H, P); y is
    (T, B, D*P), h (L*D, B, P), c (L*D, B, H). peephole=True: parameters weight_peep_l0 (3, H)
    (rows p_i, p_f, p_o; uniform like the weights). layer_norm=True (with proj_size too; with
    the projection, h_t = W_hr (o * tanh(N(c_t) g + s))):
    ln_gates_l0 (2, 4H), the gains of the normalized W_ih x and W_hh h (ones), and ln_cell_l0
    (2, H), the gain (ones) and shift (zeros) of the normalized c_t before the output tanh.
    Each after its layer and direction's weight_ih ... weight_hr (docs/lstm_variants.md)."""

    _gates = 4
    _has_cell = True

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 proj_size: int = 0, peephole: bool = False, layer_norm: bool = False,
                 **kwargs: Any) -> None:
        self.proj_size = _check_size("proj_size", proj_size, 0)
        if self.proj_size and self.proj_size >= hidden_size:
            raise ValueError(f"proj_size: expected 0 or a size below hidden_size = "
                             f"{hidden_size}, got {proj_size}")
        self.peephole = check_flag("peephole", peephole)
        self.layer_norm = check_flag("layer_norm", layer_norm)
        super().__init__(input_size, hidden_size, num_layers, **kwargs)

    def _make_pack(self, weights: Weights) -> F.PackedWeights:
        w_ih, w_hh, b_ih, b_hh, w_hr, w_peep, ln_gates, ln_cell = weights
        return F.lstm_pack(w_ih, w_hh, b_ih, b_hh, w_hr=w_hr, w_peep=w_peep, ln_gates=ln_gates,
                           ln_cell=ln_cell, precision=self.precision)

    def _extra_repr(self) -> list[str]:
        return [f"{name}={value!r}" for name, value in (
            ("proj_size", self.proj_size), ("peephole", self.peephole),
            ("layer_norm", self.layer_norm)) if value]


class GRU(_Recurrent):
    """GRU (gates r, z, n), parameters like `torch.nn.GRU`. `linear_before_reset=True` is
    PyTorch's form n = tanh(W_in x + b_in + r*(W_hn h + b_hn)); False gives ONNX's default
    n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)."""

    _gates = 3
    _has_cell = False

    def __init__(self, *args: Any, linear_before_reset: bool = True, **kwargs: Any) -> None:
        self.linear_before_reset = bool(linear_before_reset)
        super().__init__(*args, **kwargs)

    def _make_pack(self, weights: Weights) -> F.PackedWeights:
        return F.gru_pack(*weights[:4], linear_before_reset=self.linear_before_reset,
                          precision=self.precision)

    def _extra_repr(self) -> list[str]:
        return [] if self.linear_before_reset else ["linear_before_reset=False"]
