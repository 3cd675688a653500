"""Pieces shared by the reference cells: activations, the cache, per-step masks, BPTT sums."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._api import GATES, Array, Checked, check_backward, round_bf16, round_int8

__all__ = [
    "ACTIVATIONS", "Cache", "WeightGrads", "bias_or_zeros", "make_cache", "operand", "sigmoid",
    "state_or_zeros", "take_backward_args", "valid_steps",
]


def operand(a: Array, precision: str, weight: bool = False) -> Array:
    """``a`` as a product takes it, as the kernels do: with precision "bf16" rounded to bfloat16
    (both operands of every product); with "int8" each row quantized and dequantized (a
    ``weight`` (G*H, K) per gate row, 7-bit symmetric; the other operand (B, K) per row, u8 with
    a zero point: _api.round_int8); else unchanged."""
    if precision == "bf16":
        return round_bf16(a)
    return round_int8(a, weight) if precision == "int8" else a


def sigmoid(a: Array) -> Array:
    """1 / (1 + exp(-a)) without overflow: exp is only taken of -|a| <= 0."""
    e = np.exp(-np.abs(a))  # same shape as a, in (0, 1]
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(a.dtype, copy=False)


def _relu(a: Array) -> Array:
    return np.maximum(a, 0)


# f and f' written in terms of the output h = f(a), which is what the cache keeps.
ACTIVATIONS: dict[str, tuple[Callable[[Array], Array], Callable[[Array], Array]]] = {
    "tanh": (np.tanh, lambda h: 1 - h * h),
    "relu": (_relu, lambda h: (h > 0).astype(h.dtype)),
    "sigmoid": (sigmoid, lambda h: h * (1 - h)),
}


def valid_steps(c: Checked) -> Array:
    """(T, B, 1) bool: True where step t lies within sequence b (t < lengths[b])."""
    t = np.arange(c.T).reshape(c.T, 1, 1)  # (T, 1, 1)
    if c.lengths is None:
        return np.ones((c.T, c.B, 1), dtype=bool)
    return t < c.lengths.reshape(1, c.B, 1)


def state_or_zeros(s: Array | None, c: Checked, size: int | None = None) -> Array:
    """The initial state (B, size) (size H unless given), zeros when None."""
    return np.zeros((c.B, c.H if size is None else size), c.dtype) if s is None else s


def bias_or_zeros(b: Array | None, c: Checked) -> Array:
    """A bias (G*H,), zeros when None (adding exact zeros changes nothing)."""
    return np.zeros(c.G * c.H, c.dtype) if b is None else b


def valid_only(a: Array, valid: Array) -> Array:
    """a (T, B, ...) with its padded steps zeroed, as the cache keeps x and the gates: whatever x
    holds at a padded step (NaN included) reaches no gradient, as in the kernels."""
    return np.where(valid, a, 0).astype(a.dtype, copy=False)


def frozen_copy(a: Array) -> Array:
    """A read-only copy, so neither the caller nor a backward can change what the cache holds."""
    out = np.array(a, copy=True)
    out.flags.writeable = False
    return out


@dataclass(frozen=True, eq=False)
class Cache:
    """What a reference forward keeps for its backward (read-only arrays).

    Only the backward of the cell named by ``cell`` accepts it.
    """

    cell: str  # "rnn", "lstm" or "gru"
    variant: str  # rnn: the nonlinearity; gru: "linear_before_reset" or "reset_before"; lstm: ""
    has_bias: bool
    x: Array  # (T, B, I)
    w_ih: Array  # (G*H, I)
    w_hh: Array  # (G*H, P)
    valid: Array  # (T, B, 1) bool, see valid_steps
    h: Array  # (T+1, B, P): h[0] = h0, h[t+1] the state after step t (P = H but for lstm w_hr)
    gates: Array  # (T, B, G*H) activated gates: rnn f(a); lstm i, f, g, o; gru r, z, n
    c: Array | None = None  # lstm: (T+1, B, H) cell states like h
    hn: Array | None = None  # gru linear_before_reset: (T, B, H) W_hn h + b_hn
    b: Array | None = None  # lstm: (4H,) b_ih + b_hh, for the backward's recomputed steps
    # lstm variants as Checked has them, None when not used
    w_hr: Array | None = None  # (P, H)
    w_peep: Array | None = None  # (3, H)
    ln_gates: Array | None = None  # (2, 4H)
    ln_cell: Array | None = None  # (2, H)
    precision: str = "float"  # the forward's products' (see operand); the backward's too

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.x.dtype

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(T, B, I, H)."""
        T, B, I = self.x.shape
        return T, B, I, self.w_hh.shape[0] // GATES[self.cell]

    @property
    def output_size(self) -> int:
        """P, the size of h and y (H unless projected)."""
        return int(self.h.shape[2])


def make_cache(cell: str, variant: str, c: Checked, valid: Array, hs: list[Array],
               gates: list[Array], cs: list[Array] | None = None,
               hns: list[Array] | None = None, b: Array | None = None,
               precision: str = "float") -> Cache:
    """The read-only Cache of a forward: the per-step lists stacked, x and the gates of padded
    steps zeroed (see valid_only)."""
    return Cache(
        cell=cell, variant=variant, has_bias=c.b_ih is not None,
        x=frozen_copy(valid_only(c.x, valid)), w_ih=frozen_copy(c.w_ih),
        w_hh=frozen_copy(c.w_hh), valid=frozen_copy(valid), h=frozen_copy(np.stack(hs)),
        gates=frozen_copy(valid_only(np.stack(gates), valid)),
        c=None if cs is None else frozen_copy(np.stack(cs)),
        hn=None if hns is None else frozen_copy(np.stack(hns)),
        b=None if b is None else frozen_copy(b),
        **{name: None if a is None else frozen_copy(a)
           for name, a in (("w_hr", c.w_hr), ("w_peep", c.w_peep), ("ln_gates", c.ln_gates),
                           ("ln_cell", c.ln_cell))},
        precision=precision,
    )


def take_backward_args(cell: str, cache: object, dy: object, dh_n: object,
                       dc_n: object = None) -> tuple[Cache, Array, Array, Array]:
    """The arguments of ``{cell}_backward`` checked by _api.check_backward (the kernels' checks
    and messages): the cache and dy (T, B, P), dh_n (B, P), dc_n (B, H), zeros where None."""
    k, *grads = check_backward(cell, cache, Cache, dy, dh_n, dc_n)
    T, B, _, H = k.shape
    P = k.output_size
    dy_, dh, dc = (np.zeros(shape, k.dtype) if g is None else g
                   for g, shape in zip(grads, ((T, B, P), (B, P), (B, H))))
    return k, dy_, dh, dc


class WeightGrads:
    """Weight and bias gradients summed over time steps and batch (BPTT)."""

    def __init__(self, cache: Cache) -> None:
        dtype = cache.dtype
        self.precision = cache.precision  # of the products (the bias sums are not products)
        self.has_bias = cache.has_bias
        self.dw_ih = np.zeros(cache.w_ih.shape, dtype)  # (G*H, I)
        self.dw_hh = np.zeros(cache.w_hh.shape, dtype)  # (G*H, H)
        self.db_ih = np.zeros(cache.w_ih.shape[0], dtype)  # (G*H,)
        self.db_hh = np.zeros(cache.w_hh.shape[0], dtype)  # (G*H,)

    def add_ih(self, d: Array, x_t: Array, d_bias: Array | None = None) -> None:
        """Add step t's share: d (B, G*H) gradient of W_ih x_t + b_ih, x_t (B, I); ``d_bias``
        (B, G*H) that of b_ih where it differs from d (a layer norm in between)."""
        self.dw_ih += operand(d, self.precision).T @ operand(x_t, self.precision)
        self.db_ih += (d if d_bias is None else d_bias).sum(axis=0)

    def add_hh(self, d: Array, h_t: Array, rows: slice = slice(None),
               d_bias: Array | None = None) -> None:
        """Add step t's share for the gate ``rows`` of W_hh: d (B, rows) gradient of
        W_hh[rows] h_t + b_hh[rows], h_t (B, P) the vector W_hh[rows] multiplies; ``d_bias``
        as in add_ih."""
        self.dw_hh[rows] += operand(d, self.precision).T @ operand(h_t, self.precision)
        self.db_hh[rows] += (d if d_bias is None else d_bias).sum(axis=0)

    def result(self) -> tuple[Array, Array, Array | None, Array | None]:
        """(dw_ih, dw_hh, db_ih, db_hh); the bias gradients are None without biases."""
        if not self.has_bias:
            return self.dw_ih, self.dw_hh, None, None
        return self.dw_ih, self.dw_hh, self.db_ih, self.db_hh
