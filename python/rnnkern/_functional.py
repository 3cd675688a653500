"""The functional API on the compiled kernels (rnnkern._core); same contract as rnnkern.reference.

Arguments are checked by rnnkern._api (the checks the reference uses too), then handed to the
C++ core, which runs with the GIL released.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _api, _cells, _core
from ._api import Array, CrossEntropy, LSTMGrads, LSTMOutput, RNNGrads, RNNOutput

__all__ = [
    "KernelCache",
    "PackedWeights",
    "backward_many",
    "forward_many",
    "gru_pack",
    "lstm_pack",
    "rnn_pack",
    "gru_backward",
    "gru_forward",
    "lstm_backward",
    "lstm_forward",
    "rnn_backward",
    "rnn_forward",
    "softmax",
    "softmax_cross_entropy",
]

# Cell ids of the core (rnnkern::Cell).
_RNN_IDS, _LSTM, _GRU, _GRU_RH = _cells.RNN_IDS, _cells.LSTM, _cells.GRU, _cells.GRU_RH


class KernelCache:
    """What a training forward keeps for its backward. Opaque; backward does not change it.

    It holds its own copies of what the backward reads: the weights packed at the forward (a
    `_core.Pack`), x and lengths, so changing the caller's arrays in place before the backward
    changes nothing (as in rnnkern.reference).
    """

    __slots__ = ("cell", "pack", "x", "lengths", "buffers")

    def __init__(self, cell: str, pack: Any, x: Array, lengths: Array | None,
                 buffers: tuple[Any, ...]) -> None:
        self.cell = cell  # "rnn", "lstm" or "gru"
        self.pack = pack  # _core.Pack made for forward and backward
        self.x = x  # (T, B, I), the cache's own
        self.lengths = lengths  # (B,) int64, the cache's own, or None
        # hs (T+1, B, P); cs (T+1, B, H) lstm; gates (T, B, G*H) lstm/gru; aux (T, B, H) gru,
        # projected lstm (m_t); ln (T, B, 9H + 3) layer-normalized lstm (rnnkern::ln_width)
        self.buffers = buffers

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(T, B, I, H)."""
        T, B, I = self.x.shape
        return T, B, I, self.pack.hidden_size

    @property
    def output_size(self) -> int:
        """P, the size of h and y: w_hr's rows with a projection, else H."""
        return int(self.pack.output_size)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.x.dtype

    @property
    def precision(self) -> str:
        """The forward's precision, which the backward follows."""
        return _api.PRECISIONS[self.pack.precision]

    def __repr__(self) -> str:
        T, B, _, H = self.shape
        return f"<rnnkern {self.cell} cache T={T} B={B} H={H} {self.precision}>"


def _run(cell: str, pack: Any, x: Array, h0: Array | None, c0: Array | None,
         lengths: Array | None, train: bool, copy_x: bool = False,
         copy_lengths: bool = False) -> tuple[Array, Array, Array | None, KernelCache | None]:
    """The packed forward on checked arguments. The cache keeps copies of x and lengths where
    they are (or may be) the caller's memory (``copy_x``, ``copy_lengths``)."""
    return _with_cache(cell, pack, _core.forward_packed(pack, x, h0, c0, lengths, train), x,
                       lengths, train, copy_x, copy_lengths)


def _with_cache(cell: str, pack: Any, out: tuple[Any, ...], x: Array, lengths: Array | None,
                train: bool, copy_x: bool, copy_lengths: bool
                ) -> tuple[Array, Array, Array | None, KernelCache | None]:
    """A packed forward's (y, h_n, c_n, buffers) with the KernelCache of a training call."""
    y, h_n, c_n, buffers = out
    if not train:
        return y, h_n, c_n, None
    if copy_lengths and lengths is not None:
        lengths = lengths.copy()
    return y, h_n, c_n, KernelCache(cell, pack, x.copy() if copy_x else x, lengths, buffers)


def _forward(cell: str, cell_id: int, x: object, h0: object, c0: object, w_ih: object,
             w_hh: object, b_ih: object, b_hh: object, lengths: object, training: object,
             precision: object, **variants: object
             ) -> tuple[Array, Array, Array | None, KernelCache | None]:
    c = _api.check_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, **variants)
    _api.check_projection(c.w_hr)
    train = _api.check_flag("training", training)
    prec = _api.PRECISION_IDS[_api.check_precision(precision, c.dtype, train)]
    if not train and c.ln_gates is None:  # packs only the forward's panels, inside the call
        y, h_n, c_n, _ = _core.forward(cell_id, c.x, c.h0, c.c0, c.w_ih, c.w_hh, c.b_ih, c.b_hh,
                                       c.lengths, False, c.w_peep, c.w_hr, precision=prec)
        return y, h_n, c_n, None
    # The backward's panels too, now: the cache must not depend on the caller's weights.
    pack = _core.Pack(cell_id, c.w_ih, c.w_hh, c.b_ih, c.b_hh, backward=train, w_peep=c.w_peep,
                      w_hr=c.w_hr, ln_gates=c.ln_gates, ln_cell=c.ln_cell, precision=prec)
    return _run(cell, pack, c.x, c.h0, c.c0, c.lengths, train, c.x is x, c.lengths is lengths)


def _backward(cell: str, cache: object, dy: object, dh_n: object,
              dc_n: object = None) -> LSTMGrads | RNNGrads:
    """``{cell}_backward``: the arguments checked, the core's backward, its results named."""
    k, dy_, dh_, dc_ = _api.check_backward(cell, cache, KernelCache, dy, dh_n, dc_n)
    return _grads(k, tuple(_core.backward_packed(k.pack, k.x, k.lengths, k.buffers, dy_, dh_,
                                                 dc_)))


def _step_backward(cache: KernelCache, dh: Array | None, dc: Array | None,
                   into: tuple[Array | None, ...]) -> tuple[Any, ...]:
    """The backward of a one-step cache (``PackedWeights._step``) on gradients already checked:
    dh, dc (B, H) C-contiguous of its dtype or None. Adds the weight gradients to ``into``
    (dw_ih, dw_hh, db_ih, db_hh (None without bias): C-contiguous writeable arrays of the
    weights' shapes and dtype) and returns (dx (1, B, I), dh0, dc0 or None)."""
    return tuple(_core.backward_packed(cache.pack, cache.x, None, cache.buffers, None, dh, dc,
                                       into))


# ----------------------------------------------------------------------------- packed weights

# Bumped by rnnkern.set_isa: a pack made before runs on the kernels it was packed for, so the
# layers repack theirs when this changed.
isa_generation = [0]


class PackedWeights:
    """One cell's weights packed once for the kernels (``rnn_pack``, ``lstm_pack``, ``gru_pack``).

    A snapshot: made from copies, so changing the arrays it was made from changes nothing here
    (pack again after an optimizer step). Immutable; usable from several threads at once. Runs on
    the kernels of the ISA in use when it was made (``isa``).
    """

    __slots__ = ("cell", "_pack", "dtype", "input_size", "hidden_size", "output_size",
                 "has_bias", "variant", "precision")

    def __init__(self, cell: str, cell_id: int, variant: str, w_ih: object, w_hh: object,
                 b_ih: object, b_hh: object, precision: object = "float",
                 w_peep: object = None, w_hr: object = None, ln_gates: object = None,
                 ln_cell: object = None) -> None:
        wi, wh, bi, bh = _api.check_weights(cell, w_ih, w_hh, b_ih, b_hh, w_hr is not None)
        hr, peep, lng, lnc = _api.check_pack_variants(w_hr, w_peep, wh, ln_gates, ln_cell)
        _api.check_projection(hr)
        self.cell = cell  # "rnn", "lstm" or "gru"
        # rnn: the nonlinearity; gru: linear_before_reset or not; lstm: its variants ("" none)
        self.variant = variant
        self.precision = _api.check_precision(precision, wh.dtype)  # one of _api.PRECISIONS
        # int8 is inference only: no backward panels
        self._pack = _core.Pack(cell_id, wi, wh, bi, bh, backward=self.precision != "int8",
                                w_peep=peep, w_hr=hr, ln_gates=lng, ln_cell=lnc,
                                precision=_api.PRECISION_IDS[self.precision])
        self.dtype: np.dtype[Any] = wh.dtype
        self.input_size: int = wi.shape[1]
        self.hidden_size: int = self._pack.hidden_size  # H
        self.output_size: int = self._pack.output_size  # P: the size of h (H without w_hr)
        self.has_bias = bi is not None

    @property
    def isa(self) -> str:
        """The ISA whose kernels these panels are for."""
        return str(self._pack.isa)

    def forward(self, x: Array, h0: Array | None = None, c0: Array | None = None, *,
                lengths: Array | None = None, training: bool = True) -> Any:
        """``{cell}_forward`` with these weights: x (T, B, I), h0 (B, P) (P = H without a
        projection) and for lstm c0 (B, H), or None. Returns what ``{cell}_forward`` returns
        (LSTMOutput or RNNOutput); the cache goes to ``{cell}_backward``."""
        xc, h0c, c0c, lens = self._check(x, h0, c0, lengths)
        train = self._check_training(training)
        return self._output(*_run(self.cell, self._pack, xc, h0c, c0c, lens, train, xc is x,
                                  lens is lengths))

    def _check(self, x: object, h0: object, c0: object, lengths: object
               ) -> tuple[Array, Array | None, Array | None, Array | None]:
        return _api.check_packed_forward(self.cell, self.dtype, self.input_size,
                                         self.hidden_size, x, h0, c0, lengths, self.output_size)

    def _check_training(self, training: object) -> bool:
        """``training`` as a bool; ValueError if True with an inference-only precision."""
        train = _api.check_flag("training", training)
        _api.check_precision(self.precision, self.dtype, train)
        return train

    def _output(self, y: Array, h_n: Array, c_n: Array | None, cache: KernelCache | None) -> Any:
        if self.cell == "lstm":
            assert c_n is not None
            return LSTMOutput(y, h_n, c_n, cache)
        return RNNOutput(y, h_n, cache)

    def _step(self, x: object, h0: object, c0: object,
              train: bool) -> tuple[Array, Array | None, KernelCache | None] | None:
        """One step on exact arguments, checked once in the core's binding: x (B, I) or (I,),
        h0 and c0 (lstm) shaped like x with H or None, all C-contiguous arrays of the pack's
        dtype. Returns (h, c or None, cache or None), h and c shaped like h0; None when an
        argument is not exactly that (the caller's general path converts it or raises)."""
        out = self._pack.step(x, h0, c0, self._check_training(train))
        if out is None or not train:
            return None if out is None else (out[0], out[1], None)
        h, c, x3, buffers = out  # x3 (1, B, I): the core's copy of x
        return h, c, KernelCache(self.cell, self._pack, x3, None, buffers)

    def __repr__(self) -> str:
        variant = f" {self.variant}" if self.variant else ""
        proj = f" P={self.output_size}" if self._pack.has_projection else ""
        return (f"<rnnkern packed {self.cell}{variant} I={self.input_size} H={self.hidden_size}"
                f"{proj} {self.dtype} {self.precision} {self.isa}>")


def forward_many(calls: list[tuple[PackedWeights, Array, Array | None, Array | None,
                                   Array | None]], training: bool = True) -> list[Any]:
    """``pack.forward(x, h0, c0, lengths=lengths, training=training)`` for each (pack, x, h0, c0,
    lengths) of independent calls, run side by side: each on a thread of its own while there are
    threads (its steps then need no syncs), e.g. the two directions of a bidirectional layer.
    The same results, to the bit, as the calls one by one; every call is checked before any
    runs."""
    train = _api.check_flag("training", training)
    for pack, *_ in calls:
        pack._check_training(train)
    checked = [(pack, x, lengths, *pack._check(x, h0, c0, lengths))
               for pack, x, h0, c0, lengths in calls]
    outs = _core.forward_packed_many([(pack._pack, xc, h0c, c0c, lens, train)
                                      for pack, _, _, xc, h0c, c0c, lens in checked])
    return [pack._output(*_with_cache(pack.cell, pack._pack, out, xc, lens, train, xc is x,
                                      lens is lengths))
            for (pack, x, lengths, xc, _, _, lens), out in zip(checked, outs)]


def backward_many(calls: list[tuple[KernelCache, Array | None, Array | None, Array | None]]
                  ) -> list[Any]:
    """``{cell}_backward(cache, dy, dh_n[, dc_n])`` for each (cache, dy, dh_n, dc_n) of
    independent calls, side by side as in `forward_many` (dc_n: None for rnn and gru). Returns
    LSTMGrads or RNNGrads in the calls' order."""
    checked = []
    for cache, dy, dh_n, dc_n in calls:
        if not isinstance(cache, KernelCache):
            raise TypeError("calls: expected the KernelCache of a training forward, got "
                            f"{type(cache).__name__}")
        checked.append(_api.check_backward(cache.cell, cache, KernelCache, dy, dh_n,
                                           dc_n if cache.cell == "lstm" else None))
    outs = _core.backward_packed_many([(k.pack, k.x, k.lengths, k.buffers, dy_, dh_, dc_)
                                       for k, dy_, dh_, dc_ in checked])
    return [_grads(k, tuple(g)) for (k, *_), g in zip(checked, outs)]


def _grads(cache: KernelCache, g: tuple[Any, ...]) -> LSTMGrads | RNNGrads:
    """The core's (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, then dw_hr with a projection,
    dw_peep with peepholes, dln_gates and dln_cell with layer norm) as the cell's backward
    returns it."""
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, *extras = g
    if cache.cell == "lstm":
        ln = cache.pack.has_layer_norm
        names = [n for n, on in (("dw_hr", cache.pack.has_projection),
                                 ("dw_peep", cache.pack.has_peepholes), ("dln_gates", ln),
                                 ("dln_cell", ln)) if on]
        return _api.lstm_grads((dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh),
                               dict(zip(names, extras, strict=True)))
    return RNNGrads(dx, dh0, dw_ih, dw_hh, db_ih, db_hh)


def rnn_pack(w_ih: Array, w_hh: Array, b_ih: Array | None, b_hh: Array | None, *,
             nonlinearity: str = "tanh", precision: str = "float") -> PackedWeights:
    """rnn_forward's weights packed once: ``pack.forward(x, h0, ...)`` is ``rnn_forward(x, h0,
    w_ih, w_hh, b_ih, b_hh, nonlinearity=nonlinearity, precision=precision, ...)`` without
    packing them per call."""
    f = _api.check_nonlinearity(nonlinearity)
    return PackedWeights("rnn", _RNN_IDS[f], f, w_ih, w_hh, b_ih, b_hh, precision)


def lstm_pack(w_ih: Array, w_hh: Array, b_ih: Array | None, b_hh: Array | None, *,
              precision: str = "float", w_peep: Array | None = None,
              w_hr: Array | None = None, ln_gates: Array | None = None,
              ln_cell: Array | None = None) -> PackedWeights:
    """lstm_forward's weights packed once: ``pack.forward(x, h0, c0, ...)``; with a projection
    w_hr (P, H) (w_hh (4H, P)), peepholes w_peep (3, H) and layer norm ln_gates (2, 4H),
    ln_cell (2, H) (docs/lstm_variants.md) lstm_backward appends dw_hr, dw_peep, dln_gates,
    dln_cell."""
    variant = _api.lstm_variant(w_hr, w_peep, ln_gates)
    return PackedWeights("lstm", _LSTM, variant, w_ih, w_hh, b_ih, b_hh, precision, w_peep, w_hr,
                         ln_gates, ln_cell)


def gru_pack(w_ih: Array, w_hh: Array, b_ih: Array | None, b_hh: Array | None, *,
             linear_before_reset: bool = True, precision: str = "float") -> PackedWeights:
    """gru_forward's weights packed once: ``pack.forward(x, h0, ...)``."""
    lbr = _api.check_flag("linear_before_reset", linear_before_reset)
    return PackedWeights("gru", _GRU if lbr else _GRU_RH,
                         "linear_before_reset" if lbr else "reset_before", w_ih, w_hh, b_ih, b_hh,
                         precision)


def rnn_forward(x: Array, h0: Array | None, w_ih: Array, w_hh: Array, b_ih: Array | None,
                b_hh: Array | None, *, nonlinearity: str = "tanh", lengths: Array | None = None,
                training: bool = True, precision: str = "float") -> RNNOutput:
    """Vanilla RNN over x (T, B, I): h_t = f(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).

    h0 (B, H) or None; w_ih (H, I), w_hh (H, H), b_ih/b_hh (H,) or both None; nonlinearity
    "tanh", "relu" or "sigmoid"; lengths None or int (B,) in 1..T. Returns RNNOutput(y (T, B, H)
    zero past each length, h_n (B, H), cache or None when training=False). precision "float"
    (the arrays' dtype), "bf16" (float32 arrays; products of bf16-rounded operands summed in
    float32; the backward follows the forward's) or "int8" (float32 arrays, training=False only;
    int8 weights times u8 activations, exact int32 sums, docs/precision.md).
    """
    f = _api.check_nonlinearity(nonlinearity)
    y, h_n, _, cache = _forward("rnn", _RNN_IDS[f], x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths,
                                training, precision)
    return RNNOutput(y, h_n, cache)


def rnn_backward(cache: KernelCache, dy: Array | None, dh_n: Array | None = None) -> RNNGrads:
    """Gradients of rnn_forward: dy (T, B, H) or None, dh_n (B, H) or None (zeros).

    Returns RNNGrads(dx (T, B, I), dh0 (B, H), dw_ih, dw_hh, db_ih, db_hh (None without bias)).
    """
    grads = _backward("rnn", cache, dy, dh_n)
    assert isinstance(grads, RNNGrads)
    return grads


def lstm_forward(x: Array, h0: Array | None, c0: Array | None, w_ih: Array, w_hh: Array,
                 b_ih: Array | None, b_hh: Array | None, *, lengths: Array | None = None,
                 training: bool = True, precision: str = "float", w_hr: Array | None = None,
                 w_peep: Array | None = None, ln_gates: Array | None = None,
                 ln_cell: Array | None = None) -> LSTMOutput:
    """LSTM over x (T, B, I), gates i, f, g, o as in PyTorch: w_ih (4H, I), w_hh (4H, H).

    h0, c0 (B, H) or None; precision as for rnn_forward. Returns LSTMOutput(y (T, B, H), h_n,
    c_n (B, H), cache or None). A projection w_hr (P, H) (PyTorch's proj_size: w_hh (4H, P);
    h0, y, h_n of size P), peepholes w_peep (3, H) and layer norm ln_gates (2, 4H), ln_cell
    (2, H) (docs/lstm_variants.md; any combination).
    """
    y, h_n, c_n, cache = _forward("lstm", _LSTM, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths,
                                  training, precision, w_hr=w_hr, w_peep=w_peep,
                                  ln_gates=ln_gates, ln_cell=ln_cell)
    assert c_n is not None
    return LSTMOutput(y, h_n, c_n, cache)


def lstm_backward(cache: KernelCache, dy: Array | None, dh_n: Array | None = None,
                  dc_n: Array | None = None) -> LSTMGrads:
    """Gradients of lstm_forward: LSTMGrads(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh), then
    dw_hr (P, H) when the forward had a projection, dw_peep (3, H) when it had peepholes and
    dln_gates (2, 4H), dln_cell (2, H) when it had layer norm."""
    grads = _backward("lstm", cache, dy, dh_n, dc_n)
    assert isinstance(grads, LSTMGrads)
    return grads


def gru_forward(x: Array, h0: Array | None, w_ih: Array, w_hh: Array, b_ih: Array | None,
                b_hh: Array | None, *, lengths: Array | None = None, training: bool = True,
                linear_before_reset: bool = True, precision: str = "float") -> RNNOutput:
    """GRU over x (T, B, I), gates r, z, n as in PyTorch: w_ih (3H, I), w_hh (3H, H).

    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) (linear_before_reset=True, PyTorch's form) or
    tanh(W_in x + b_in + W_hn (r * h) + b_hn) (False); h_t = (1 - z) * n + z * h_{t-1};
    precision as for rnn_forward.
    """
    lbr = _api.check_flag("linear_before_reset", linear_before_reset)
    y, h_n, _, cache = _forward("gru", _GRU if lbr else _GRU_RH, x, h0, None, w_ih, w_hh, b_ih,
                                b_hh, lengths, training, precision)
    return RNNOutput(y, h_n, cache)


def gru_backward(cache: KernelCache, dy: Array | None, dh_n: Array | None = None) -> RNNGrads:
    """Gradients of gru_forward: RNNGrads(dx, dh0, dw_ih, dw_hh, db_ih, db_hh)."""
    grads = _backward("gru", cache, dy, dh_n)
    assert isinstance(grads, RNNGrads)
    return grads


def softmax(z: Array) -> Array:
    """Softmax over the last axis of z (..., C), float32 or float64."""
    za = _api.check_softmax_input(z)
    out: Array = _core.softmax(za)
    return out


def softmax_cross_entropy(logits: Array, targets: Array, *,
                          ignore_index: int = -100) -> CrossEntropy:
    """Mean cross-entropy of logits (N, C) against integer targets (N,), and dlogits (N, C).

    Rows whose target equals ignore_index count for nothing (zero dlogits); the mean is over
    the others (0.0 if there are none). loss = logsumexp(logits) - logits[target], so finite for
    logits of +-1e4.
    """
    la, ta = _api.check_logits_targets(logits, targets, ignore_index)
    loss, dlogits = _core.softmax_cross_entropy(la, ta, int(ignore_index))
    return CrossEntropy(float(loss), dlogits)
