"""One-step cells (`RNNCell`, `LSTMCell`, `GRUCell`) on the kernels, for loops written by hand:
decoders feeding back their output, beam search, sampling, attention.

Like `torch.nn.RNNCell` / `LSTMCell` / `GRUCell`: the same constructor arguments, parameter names
(weight_ih (G*H, I), weight_hh (G*H, H), bias_ih, bias_hh (G*H,)) and initialization, so
`load_state_dict(torch_cell.state_dict())` loads a torch cell; input x (B, I) or unbatched (I,),
state h (B, H) (LSTM: (h, c)) or None for zeros; one step per call, the state fed back by the
caller. The weights are packed once and kept until a parameter changes (`WeightPacks`).

Training: each call with training=True records its step; `backward(dstate)` runs back through
the last recorded step, removes it, adds the parameter gradients into `grads` and returns
(dx, dstate of the step's input state). Call it once per step, in reverse order, adding the
gradient each step's output received from elsewhere:

    for t in reversed(range(T)):
        dx[t], dh = cell.backward(dh + dy[t])
"""
from __future__ import annotations

import math
from typing import Any, Union

import numpy as np
import numpy.typing as npt

from .. import _functional as F
from .._api import check_flag, check_nonlinearity, shape_message
from .linear import ParamModule, WeightPacks, _check_dtype, _check_size, _uniform

__all__ = ["GRUCell", "LSTMCell", "RNNCell"]

Array = npt.NDArray[Any]
# A cell's state: h (B, H) or (H,), for LSTMCell (h, c).
State = Union[Array, tuple[Array, Array]]
_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class _Cell(ParamModule):
    """The three cells' common code; a subclass sets `_cell`, `_gates` and `_make_pack`."""

    _cell = "rnn"
    _gates = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 dtype: npt.DTypeLike = np.float32,
                 seed: None | int | np.random.Generator = None) -> None:
        self.input_size = _check_size("input_size", input_size, 0)
        self.hidden_size = _check_size("hidden_size", hidden_size, 0)
        self.bias = bool(bias)
        self.dtype = _check_dtype(dtype)
        rng = np.random.default_rng(seed)
        k = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        gh = self._gates * self.hidden_size
        shapes = ((gh, self.input_size), (gh, self.hidden_size), (gh,), (gh,))
        self._init_params({name: _uniform(rng, k, name, shape, self.dtype)
                           for name, shape in zip(_NAMES, shapes)
                           if self.bias or name.startswith("weight")}, read_only=True)
        self._packs = WeightPacks(self, self._make_pack)
        # the parameter arrays (updated in place, never replaced), None where absent
        self._weight_arrays = tuple(self.params.get(n) for n in _NAMES)
        self._steps: list[tuple[Any, bool]] = []  # per recorded step: (cache, unbatched)

    def _make_pack(self, weights: Any) -> F.PackedWeights:
        raise NotImplementedError

    def _weights(self) -> tuple[Array | None, ...]:
        return self._weight_arrays

    # -- checks ---------------------------------------------------------------------------------

    def _check_state(self, name: str, s: object, batch: int | None) -> Array:
        """A state part (B, H) ((H,) when ``batch`` is None), contiguous."""
        a = self._check_input(name, s)
        want = (self.hidden_size,) if batch is None else (batch, self.hidden_size)
        if a.shape != want:
            symbols = ("H",) if batch is None else ("B", "H")
            raise ValueError(shape_message(name, symbols, want, a.shape))
        return np.ascontiguousarray(a).reshape(1 if batch is None else batch, self.hidden_size)

    def _states(self, name: str, state: object, batch: int | None,
                parts: int) -> list[Array | None]:
        """``state`` (h, or (h, c) when parts == 2, or None) split and checked."""
        if state is None:
            return [None] * parts
        if parts == 1:
            return [self._check_state(name, state, batch)]
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"{name}: expected a tuple (h, c) or None, got {type(state).__name__}")
        return [None if s is None else self._check_state(f"{name}[{i}]", s, batch)
                for i, s in enumerate(state)]

    # -- one step -------------------------------------------------------------------------------

    def _step(self, x: object, state: object, training: bool) -> State:
        if training is True or training is False:  # the fast path, on exact arguments
            h0, c0 = None, None
            if state is not None and self._cell != "lstm":
                h0 = state
            elif isinstance(state, tuple) and len(state) == 2:
                h0, c0 = state
            elif state is not None:  # not an LSTM state: the checks below say why
                return self._step_checked(x, state, training)
            out = self._packs.get(0, self._weight_arrays)._step(x, h0, c0, training)
            if out is not None:
                h, c, cache = out
                if cache is not None:
                    self._steps.append((cache, x.ndim == 1))  # type: ignore[attr-defined]
                return h if c is None else (h, c)
        return self._step_checked(x, state, training)

    def _step_checked(self, x: object, state: object, training: bool) -> State:
        """The step with every argument checked (clear errors) and converted to exact arrays."""
        xa = self._check_input("x", x)
        if xa.ndim not in (1, 2) or xa.shape[-1] != self.input_size:
            raise ValueError(f"x: expected shape (B, input_size) = (B, {self.input_size}) or "
                             f"(input_size,) = ({self.input_size},), got {xa.shape}")
        unbatched = xa.ndim == 1
        batch = None if unbatched else xa.shape[0]
        parts = 2 if self._cell == "lstm" else 1
        h0, *c0 = self._states("state", state, batch, parts)
        if training is not True and training is not False:
            raise TypeError(f"training: expected a bool, got {type(training).__name__}")
        pack = self._packs.get(0, self._weights())
        x3 = np.ascontiguousarray(xa).reshape(1, 1 if unbatched else xa.shape[0], -1)  # (1, B, I)
        _, h, c, cache = F._run(self._cell, pack._pack, x3, h0, c0[0] if c0 else None, None,
                                training, copy_x=True)
        if training:
            self._steps.append((cache, unbatched))
        if unbatched:
            h = h.reshape(self.hidden_size)
            c = None if c is None else c.reshape(self.hidden_size)
        return h if c is None else (h, c)

    def __call__(self, x: Array, h: Array | None = None, training: bool = True) -> Array:
        """One step: x (B, I) or (I,), h like the result h' or None (zeros)."""
        out: Array = self._step(x, h, training)  # type: ignore[assignment]
        return out

    def backward(self, dstate: State | None) -> tuple[Array, State]:
        """Back through the last recorded step (removing it); adds into `grads`.

        dstate: the gradient of that step's output state, shaped like it (LSTM: (dh, dc); None
        parts are zero). Returns (dx like the step's x, the gradient of its input state).
        """
        if not self._steps:
            raise RuntimeError("backward: no recorded step left; call the cell with "
                               "training=True (one backward per step taken, in reverse)")
        cache, unbatched = self._steps[-1]
        B = cache.shape[1]
        parts = 2 if self._cell == "lstm" else 1
        dh, *dc = self._states("dstate", dstate, None if unbatched else B, parts)
        # the core adds the weight gradients to ours: no (G*H, I + H) array per step
        dx, dh0, dc0 = F._step_backward(cache, dh, dc[0] if dc else None,
                                        tuple(self.grads.get(n) for n in _NAMES))
        self._steps.pop()
        shape = (self.hidden_size,) if unbatched else (B, self.hidden_size)
        dx = dx.reshape((self.input_size,) if unbatched else (B, self.input_size))
        dh0 = dh0.reshape(shape)
        return dx, (dh0 if dc0 is None else (dh0, dc0.reshape(shape)))

    @property
    def steps_recorded(self) -> int:
        """Training steps whose backward has not run yet."""
        return len(self._steps)

    def clear_steps(self) -> None:
        """Forget the recorded steps (their caches) without running their backward."""
        self._steps.clear()

    def __repr__(self) -> str:
        extra = "" if self.bias else ", bias=False"
        extra += self._extra_repr()
        if self.dtype != np.dtype(np.float32):
            extra += f", dtype={self.dtype}"
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size}{extra})"

    def _extra_repr(self) -> str:
        return ""


class RNNCell(_Cell):
    """`torch.nn.RNNCell`: h' = f(W_ih x + b_ih + W_hh h + b_hh), f = tanh or relu (or sigmoid).

    cell(x, h=None, training=True) -> h'; x (B, I) or (I,), h like h'.
    """

    _cell, _gates = "rnn", 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", **kwargs: Any) -> None:
        self.nonlinearity = check_nonlinearity(nonlinearity)
        super().__init__(input_size, hidden_size, bias, **kwargs)

    def _make_pack(self, weights: Any) -> F.PackedWeights:
        return F.rnn_pack(*weights, nonlinearity=self.nonlinearity)

    def _extra_repr(self) -> str:
        return "" if self.nonlinearity == "tanh" else f", nonlinearity='{self.nonlinearity}'"


class LSTMCell(_Cell):
    """`torch.nn.LSTMCell` (gates i, f, g, o).

    cell(x, (h, c)=None, training=True) -> (h', c'); x (B, I) or (I,), h and c like h'.
    """

    _cell, _gates = "lstm", 4

    def _make_pack(self, weights: Any) -> F.PackedWeights:
        return F.lstm_pack(*weights)

    def __call__(self, x: Array, state: tuple[Array, Array] | None = None,  # type: ignore[override]
                 training: bool = True) -> tuple[Array, Array]:
        out: tuple[Array, Array] = self._step(x, state, training)  # type: ignore[assignment]
        return out


class GRUCell(_Cell):
    """`torch.nn.GRUCell` (gates r, z, n); `linear_before_reset=False` gives ONNX's default form.

    cell(x, h=None, training=True) -> h'; x (B, I) or (I,), h like h'.
    """

    _cell, _gates = "gru", 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 linear_before_reset: bool = True, **kwargs: Any) -> None:
        self.linear_before_reset = check_flag("linear_before_reset", linear_before_reset)
        super().__init__(input_size, hidden_size, bias, **kwargs)

    def _make_pack(self, weights: Any) -> F.PackedWeights:
        return F.gru_pack(*weights, linear_before_reset=self.linear_before_reset)

    def _extra_repr(self) -> str:
        return "" if self.linear_before_reset else ", linear_before_reset=False"
