"""Reference vanilla RNN: h_t = f(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), f tanh, relu, sigmoid."""
from __future__ import annotations

import numpy as np

from .._api import (
    Array,
    RNNGrads,
    RNNOutput,
    check_flag,
    check_forward,
    check_nonlinearity,
    check_precision,
)
from ._common import (
    ACTIVATIONS,
    WeightGrads,
    bias_or_zeros,
    make_cache,
    operand,
    state_or_zeros,
    take_backward_args,
    valid_steps,
)

__all__ = ["rnn_backward", "rnn_forward"]


def rnn_forward(
    x: Array,
    h0: Array | None,
    w_ih: Array,
    w_hh: Array,
    b_ih: Array | None,
    b_hh: Array | None,
    *,
    nonlinearity: str = "tanh",
    lengths: Array | None = None,
    training: bool = True,
    precision: str = "float",
) -> RNNOutput:
    """Run a vanilla RNN over x (T, B, I).

    h0 (B, H) or None (zeros); w_ih (H, I), w_hh (H, H), b_ih/b_hh (H,) or both None; lengths
    None or int (B,) in 1..T. Returns RNNOutput(y (T, B, H) zero past each length, h_n (B, H)
    the state after each sequence's last step, cache or None when training=False), all of
    x's dtype.
    """
    c = check_forward("rnn", x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths)
    f, _ = ACTIVATIONS[check_nonlinearity(nonlinearity)]
    training = check_flag("training", training)
    prec = check_precision(precision, c.dtype, training)  # operands as the products take them
    w_ih_, w_hh_ = operand(c.w_ih, prec, True), operand(c.w_hh, prec, True)  # (H, I), (H, H)
    b_ih_, b_hh_ = bias_or_zeros(c.b_ih, c), bias_or_zeros(c.b_hh, c)  # (H,) each
    valid = valid_steps(c)  # (T, B, 1)
    y = np.zeros((c.T, c.B, c.H), c.dtype)  # (T, B, H)
    h = state_or_zeros(c.h0, c)  # (B, H) state h_{t-1}
    hs, gates = [h], []  # per step (B, H) each, kept only for training
    for t in range(c.T):
        a = operand(c.x[t], prec) @ w_ih_.T + b_ih_ + operand(h, prec) @ w_hh_.T + b_hh_  # (B, H)
        h_new = f(a)  # (B, H)
        y[t] = np.where(valid[t], h_new, 0)
        h = np.where(valid[t], h_new, h)  # frozen past the length
        if training:
            hs.append(h)
            gates.append(h_new)
    cache = None
    if training:
        cache = make_cache("rnn", nonlinearity, c, valid, hs, gates, precision=prec)
    return RNNOutput(y, h.copy(), cache)


def rnn_backward(cache: object, dy: Array | None, dh_n: Array | None = None) -> RNNGrads:
    """Backpropagation through time for :func:`rnn_forward`.

    dy (T, B, H) or None (only h_n gets a gradient; ignored at padded steps), dh_n (B, H) or None
    (zero). Returns RNNGrads(dx (T, B, I), dh0 (B, H), dw_ih (H, I), dw_hh (H, H), db_ih, db_hh
    (H,) or None without biases), the weight gradients summed over all steps.
    """
    # dy (T, B, H); dh (B, H) dL/dh_t, carried backwards
    k, dy_, dh, _ = take_backward_args("rnn", cache, dy, dh_n)
    _, fprime = ACTIVATIONS[k.variant]
    w_ih_, w_hh_ = operand(k.w_ih, k.precision), operand(k.w_hh, k.precision)
    sums = WeightGrads(k)
    dx = np.zeros(k.x.shape, k.dtype)  # (T, B, I)
    for t in reversed(range(k.shape[0])):
        v = k.valid[t]  # (B, 1)
        g = np.where(v, dh + dy_[t], 0)  # (B, H) gradient entering step t's cell, 0 if padded
        da = g * fprime(k.gates[t])  # (B, H) dL/d pre-activation
        da_ = operand(da, k.precision)  # (B, H) as the products take it
        dx[t] = da_ @ w_ih_
        sums.add_ih(da, k.x[t])
        sums.add_hh(da, k.h[t])
        dh = np.where(v, da_ @ w_hh_, dh)  # padded steps pass dh through unchanged
    return RNNGrads(dx, dh, *sums.result())
