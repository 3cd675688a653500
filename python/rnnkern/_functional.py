"""The functional API on the compiled kernels (rnnkern._core); same contract as rnnkern.reference.

Arguments are checked by rnnkern._api (the checks the reference uses too), then handed to the
C++ core, which runs with the GIL released.
"""
from __future__ import annotations

from typing import Any

from . import _api, _core
from ._api import Array, Checked, CrossEntropy, LSTMGrads, LSTMOutput, RNNGrads, RNNOutput

__all__ = [
    "KernelCache",
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
_RNN_IDS = {"tanh": 0, "relu": 1, "sigmoid": 2}
_LSTM, _GRU, _GRU_RH = 3, 4, 5


class KernelCache:
    """What a training forward keeps for its backward. Opaque; backward does not change it.

    It refers to the forward's x and weights (copies only where they had to be made contiguous):
    changing those arrays in place before the backward changes the gradients.
    """

    __slots__ = ("cell", "cell_id", "x", "w_ih", "w_hh", "has_bias", "lengths", "buffers")

    def __init__(self, cell: str, cell_id: int, c: Checked, buffers: tuple[Any, ...]) -> None:
        self.cell = cell  # "rnn", "lstm" or "gru"
        self.cell_id = cell_id
        self.x, self.w_ih, self.w_hh = c.x, c.w_ih, c.w_hh  # (T, B, I), (G*H, I), (G*H, H)
        self.has_bias = c.b_ih is not None
        self.lengths = c.lengths  # (B,) int64 or None
        # hs (T+1, B, H); cs (T+1, B, H) lstm; gates (T, B, G*H) lstm/gru; aux (T, B, H) gru
        self.buffers = buffers

    def __repr__(self) -> str:
        T, B, _ = self.x.shape
        return f"<rnnkern {self.cell} cache T={T} B={B} H={self.w_hh.shape[1]}>"


def _forward(cell: str, cell_id: int, x: object, h0: object, c0: object, w_ih: object,
             w_hh: object, b_ih: object, b_hh: object, lengths: object,
             training: object) -> tuple[Array, Array, Array | None, KernelCache | None]:
    c = _api.check_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)
    train = _api.check_flag("training", training)
    y, h_n, c_n, buffers = _core.forward(cell_id, c.x, c.h0, c.c0, c.w_ih, c.w_hh, c.b_ih, c.b_hh,
                                         c.lengths, train)
    return y, h_n, c_n, KernelCache(cell, cell_id, c, buffers) if train else None


def _backward(cell: str, cache: object, dy: object, dh_n: object,
              dc_n: object = None) -> tuple[Any, ...]:
    if cache is None:
        raise ValueError("cache: None: the forward ran with training=False and kept nothing")
    if not isinstance(cache, KernelCache) or cache.cell != cell:
        what = f"a {cache.cell} cache" if isinstance(cache, KernelCache) else type(cache).__name__
        raise TypeError(f"cache: expected the cache of rnnkern.{cell}_forward, got {what}")
    T, B, _ = cache.x.shape
    H = cache.w_hh.shape[1]
    dtype = cache.x.dtype
    dy_ = _api.check_grad("dy", dy, (T, B, H), dtype, ("T", "B", "H"))
    dh_ = _api.check_grad("dh_n", dh_n, (B, H), dtype, ("B", "H"))
    dc_ = _api.check_grad("dc_n", dc_n, (B, H), dtype, ("B", "H"))
    return tuple(_core.backward(cache.cell_id, cache.x, cache.w_ih, cache.w_hh, cache.has_bias,
                                cache.lengths, cache.buffers, dy_, dh_, dc_))


def rnn_forward(x: Array, h0: Array | None, w_ih: Array, w_hh: Array, b_ih: Array | None,
                b_hh: Array | None, *, nonlinearity: str = "tanh", lengths: Array | None = None,
                training: bool = True) -> RNNOutput:
    """Vanilla RNN over x (T, B, I): h_t = f(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).

    h0 (B, H) or None; w_ih (H, I), w_hh (H, H), b_ih/b_hh (H,) or both None; nonlinearity
    "tanh", "relu" or "sigmoid"; lengths None or int (B,) in 1..T. Returns RNNOutput(y (T, B, H)
    zero past each length, h_n (B, H), cache or None when training=False).
    """
    f = _api.check_nonlinearity(nonlinearity)
    y, h_n, _, cache = _forward("rnn", _RNN_IDS[f], x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths,
                                training)
    return RNNOutput(y, h_n, cache)


def rnn_backward(cache: KernelCache, dy: Array | None, dh_n: Array | None = None) -> RNNGrads:
    """Gradients of rnn_forward: dy (T, B, H) or None, dh_n (B, H) or None (zeros).

    Returns RNNGrads(dx (T, B, I), dh0 (B, H), dw_ih, dw_hh, db_ih, db_hh (None without bias)).
    """
    dx, dh0, _, dw_ih, dw_hh, db_ih, db_hh = _backward("rnn", cache, dy, dh_n)
    return RNNGrads(dx, dh0, dw_ih, dw_hh, db_ih, db_hh)


def lstm_forward(x: Array, h0: Array | None, c0: Array | None, w_ih: Array, w_hh: Array,
                 b_ih: Array | None, b_hh: Array | None, *, lengths: Array | None = None,
                 training: bool = True) -> LSTMOutput:
    """LSTM over x (T, B, I), gates i, f, g, o as in PyTorch: w_ih (4H, I), w_hh (4H, H).

    h0, c0 (B, H) or None. Returns LSTMOutput(y (T, B, H), h_n, c_n (B, H), cache or None).
    """
    y, h_n, c_n, cache = _forward("lstm", _LSTM, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths,
                                  training)
    assert c_n is not None
    return LSTMOutput(y, h_n, c_n, cache)


def lstm_backward(cache: KernelCache, dy: Array | None, dh_n: Array | None = None,
                  dc_n: Array | None = None) -> LSTMGrads:
    """Gradients of lstm_forward: LSTMGrads(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh)."""
    return LSTMGrads(*_backward("lstm", cache, dy, dh_n, dc_n))


def gru_forward(x: Array, h0: Array | None, w_ih: Array, w_hh: Array, b_ih: Array | None,
                b_hh: Array | None, *, lengths: Array | None = None, training: bool = True,
                linear_before_reset: bool = True) -> RNNOutput:
    """GRU over x (T, B, I), gates r, z, n as in PyTorch: w_ih (3H, I), w_hh (3H, H).

    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) (linear_before_reset=True, PyTorch's form) or
    tanh(W_in x + b_in + W_hn (r * h) + b_hn) (False); h_t = (1 - z) * n + z * h_{t-1}.
    """
    lbr = _api.check_flag("linear_before_reset", linear_before_reset)
    y, h_n, _, cache = _forward("gru", _GRU if lbr else _GRU_RH, x, h0, None, w_ih, w_hh, b_ih,
                                b_hh, lengths, training)
    return RNNOutput(y, h_n, cache)


def gru_backward(cache: KernelCache, dy: Array | None, dh_n: Array | None = None) -> RNNGrads:
    """Gradients of gru_forward: RNNGrads(dx, dh0, dw_ih, dw_hh, db_ih, db_hh)."""
    dx, dh0, _, dw_ih, dw_hh, db_ih, db_hh = _backward("gru", cache, dy, dh_n)
    return RNNGrads(dx, dh0, dw_ih, dw_hh, db_ih, db_hh)


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
