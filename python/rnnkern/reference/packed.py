"""Reference of the packed weights (``rnn_pack``, ``lstm_pack``, ``gru_pack``): the same API as
rnnkern's `PackedWeights`, on copies of the weights and the reference's forwards, so a program
written against packed weights runs (slowly, obviously correctly) on the reference too."""
from __future__ import annotations

from typing import Any

import numpy as np

from .._api import (
    Array,
    check_flag,
    check_nonlinearity,
    check_pack_variants,
    check_packed_forward,
    check_precision,
    check_projection,
    check_weights,
    lstm_variant,
)
from .gru import gru_forward
from .lstm import lstm_forward
from .rnn import rnn_forward

__all__ = ["PackedWeights", "gru_pack", "lstm_pack", "rnn_pack"]


class PackedWeights:
    """One cell's weights, copied once: ``forward`` is the reference's ``{cell}_forward`` with
    them (its cache goes to the reference's ``{cell}_backward``). Immutable."""

    __slots__ = ("cell", "_weights", "_options", "dtype", "input_size", "hidden_size",
                 "output_size", "has_bias", "variant", "precision")

    def __init__(self, cell: str, variant: str, options: dict[str, Any], w_ih: object,
                 w_hh: object, b_ih: object, b_hh: object, precision: object,
                 w_peep: object = None, w_hr: object = None, ln_gates: object = None,
                 ln_cell: object = None) -> None:
        weights = check_weights(cell, w_ih, w_hh, b_ih, b_hh, w_hr is not None)
        hr, peep, lng, lnc = check_pack_variants(w_hr, w_peep, weights[1], ln_gates, ln_cell)
        check_projection(hr)
        self.cell = cell  # "rnn", "lstm" or "gru"
        # rnn: the nonlinearity; gru: linear_before_reset or not; lstm: its variants ("" none)
        self.variant = variant
        self.dtype: np.dtype[Any] = weights[1].dtype
        self.precision = check_precision(precision, self.dtype)
        w_ih_, w_hh_, b_ih_, b_hh_ = weights
        # w_ih (G*H, I), w_hh (G*H, P), b_ih, b_hh (G*H,) or None: read-only copies
        self._weights: tuple[Array, Array, Array | None, Array | None] = (
            _frozen(w_ih_), _frozen(w_hh_), None if b_ih_ is None else _frozen(b_ih_),
            None if b_hh_ is None else _frozen(b_hh_))
        # the forward's keywords that select the cell's form; lstm: w_hr (P, H), w_peep (3, H),
        # ln_gates (2, 4H), ln_cell (2, H)
        self._options = dict(options, **{k: _frozen(a) for k, a in (
            ("w_hr", hr), ("w_peep", peep), ("ln_gates", lng), ("ln_cell", lnc)) if a is not None})
        self.input_size: int = weights[0].shape[1]
        self.hidden_size: int = weights[1].shape[1] if hr is None else hr.shape[1]  # H
        self.output_size: int = weights[1].shape[1]  # P: the size of h (H without w_hr)
        self.has_bias = weights[2] is not None

    @property
    def isa(self) -> str:
        """"reference": no kernels run these weights."""
        return "reference"

    def forward(self, x: Array, h0: Array | None = None, c0: Array | None = None, *,
                lengths: Array | None = None, training: bool = True) -> Any:
        """``{cell}_forward`` with these weights (LSTMOutput or RNNOutput)."""
        xc, h0c, c0c, lens = check_packed_forward(self.cell, self.dtype, self.input_size,
                                                  self.hidden_size, x, h0, c0, lengths,
                                                  self.output_size)
        kw = dict(self._options, lengths=lens, training=check_flag("training", training),
                  precision=self.precision)
        if self.cell == "lstm":
            return lstm_forward(xc, h0c, c0c, *self._weights, **kw)
        forward = rnn_forward if self.cell == "rnn" else gru_forward
        return forward(xc, h0c, *self._weights, **kw)

    def __repr__(self) -> str:
        variant = f" {self.variant}" if self.variant else ""
        proj = f" P={self.output_size}" if "w_hr" in self._options else ""
        return (f"<rnnkern reference packed {self.cell}{variant} I={self.input_size} "
                f"H={self.hidden_size}{proj} {self.dtype} {self.precision}>")


def _frozen(a: Array) -> Array:
    out = np.array(a, copy=True)
    out.flags.writeable = False
    return out


def rnn_pack(w_ih: Array, w_hh: Array, b_ih: Array | None, b_hh: Array | None, *,
             nonlinearity: str = "tanh", precision: str = "float") -> PackedWeights:
    """rnn_forward's weights, once: ``pack.forward(x, h0, ...)``."""
    f = check_nonlinearity(nonlinearity)
    return PackedWeights("rnn", f, {"nonlinearity": f}, w_ih, w_hh, b_ih, b_hh, precision)


def lstm_pack(w_ih: Array, w_hh: Array, b_ih: Array | None, b_hh: Array | None, *,
              precision: str = "float", w_peep: Array | None = None,
              w_hr: Array | None = None, ln_gates: Array | None = None,
              ln_cell: Array | None = None) -> PackedWeights:
    """lstm_forward's weights, once: ``pack.forward(x, h0, c0, ...)``; with a projection w_hr
    (P, H) (w_hh (4H, P)), peepholes w_peep (3, H) and layer norm ln_gates (2, 4H), ln_cell
    (2, H) as the compiled ``lstm_pack``."""
    variant = lstm_variant(w_hr, w_peep, ln_gates)
    return PackedWeights("lstm", variant, {}, w_ih, w_hh, b_ih, b_hh, precision, w_peep, w_hr,
                         ln_gates, ln_cell)


def gru_pack(w_ih: Array, w_hh: Array, b_ih: Array | None, b_hh: Array | None, *,
             linear_before_reset: bool = True, precision: str = "float") -> PackedWeights:
    """gru_forward's weights, once: ``pack.forward(x, h0, ...)``."""
    lbr = check_flag("linear_before_reset", linear_before_reset)
    return PackedWeights("gru", "linear_before_reset" if lbr else "reset_before",
                         {"linear_before_reset": lbr}, w_ih, w_hh, b_ih, b_hh, precision)
