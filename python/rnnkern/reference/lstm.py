"""Reference LSTM (PyTorch's gate order i, f, g, o).

    i, f, g, o = sigma(a_i), sigma(a_f), tanh(a_g), sigma(a_o),  a = W_ih x_t + b_ih + W_hh h + b_hh
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)
"""
from __future__ import annotations

import numpy as np

from .._api import Array, LSTMGrads, LSTMOutput, check_flag, check_forward, check_precision
from ._common import (
    WeightGrads,
    bias_or_zeros,
    make_cache,
    operand,
    sigmoid,
    state_or_zeros,
    take_backward_args,
    valid_steps,
)

__all__ = ["lstm_backward", "lstm_forward"]


def _split(a: Array, H: int) -> tuple[Array, Array, Array, Array]:
    """The four (B, H) gate blocks of a (B, 4H) array, in the order i, f, g, o."""
    return a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]


def lstm_forward(
    x: Array,
    h0: Array | None,
    c0: Array | None,
    w_ih: Array,
    w_hh: Array,
    b_ih: Array | None,
    b_hh: Array | None,
    *,
    lengths: Array | None = None,
    training: bool = True,
    precision: str = "float",
) -> LSTMOutput:
    """Run an LSTM over x (T, B, I).

    h0, c0 (B, H) or None (zeros); w_ih (4H, I), w_hh (4H, H), b_ih/b_hh (4H,) or both None;
    lengths None or int (B,) in 1..T. Returns LSTMOutput(y (T, B, H) zero past each length,
    h_n, c_n (B, H) after each sequence's last step, cache or None when training=False).
    precision "bf16" rounds both operands of every product to bfloat16 (see operand).
    """
    c = check_forward("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)
    training = check_flag("training", training)
    prec = check_precision(precision, c.dtype)
    w_ih_, w_hh_ = operand(c.w_ih, prec), operand(c.w_hh, prec)  # (4H, I), (4H, H)
    H = c.H
    b_ih_, b_hh_ = bias_or_zeros(c.b_ih, c), bias_or_zeros(c.b_hh, c)  # (4H,) each
    valid = valid_steps(c)  # (T, B, 1)
    y = np.zeros((c.T, c.B, H), c.dtype)  # (T, B, H)
    h = state_or_zeros(c.h0, c)  # (B, H)
    cell = state_or_zeros(c.c0, c)  # (B, H)
    hs, cs, gates = [h], [cell], []  # per step (B, H), (B, H), (B, 4H); training only
    for t in range(c.T):
        a = operand(c.x[t], prec) @ w_ih_.T + b_ih_ + operand(h, prec) @ w_hh_.T + b_hh_  # (B, 4H)
        a_i, a_f, a_g, a_o = _split(a, H)
        i, f, g, o = sigmoid(a_i), sigmoid(a_f), np.tanh(a_g), sigmoid(a_o)  # (B, H) each
        c_new = f * cell + i * g  # (B, H)
        h_new = o * np.tanh(c_new)  # (B, H)
        y[t] = np.where(valid[t], h_new, 0)
        h = np.where(valid[t], h_new, h)
        cell = np.where(valid[t], c_new, cell)
        if training:
            hs.append(h)
            cs.append(cell)
            gates.append(np.concatenate([i, f, g, o], axis=1))
    cache = None
    if training:
        cache = make_cache("lstm", "", c, valid, hs, gates, cs=cs, precision=prec)
    return LSTMOutput(y, h.copy(), cell.copy(), cache)


def lstm_backward(
    cache: object, dy: Array | None, dh_n: Array | None = None, dc_n: Array | None = None
) -> LSTMGrads:
    """Backpropagation through time for :func:`lstm_forward`.

    dy (T, B, H) or None, dh_n and dc_n (B, H) or None (zero). Returns LSTMGrads(dx (T, B, I),
    dh0, dc0 (B, H), dw_ih (4H, I), dw_hh (4H, H), db_ih, db_hh (4H,) or None without biases).
    """
    # dy (T, B, H); dh, dc (B, H): dL/dh_t, dL/dc_t
    k, dy_, dh, dc = take_backward_args("lstm", cache, dy, dh_n, dc_n)
    assert k.c is not None
    T, _, _, H = k.shape
    w_ih_, w_hh_ = operand(k.w_ih, k.precision), operand(k.w_hh, k.precision)
    sums = WeightGrads(k)
    dx = np.zeros(k.x.shape, k.dtype)  # (T, B, I)
    for t in reversed(range(T)):
        v = k.valid[t]  # (B, 1)
        i, f, g, o = _split(k.gates[t], H)  # (B, H) each
        c_prev, tanh_c = k.c[t], np.tanh(k.c[t + 1])  # (B, H) each
        g_h = np.where(v, dh + dy_[t], 0)  # (B, H) into h_t, 0 if padded
        g_c = np.where(v, dc, 0) + g_h * o * (1 - tanh_c * tanh_c)  # (B, H) into c_t
        da = np.concatenate([
            g_c * g * i * (1 - i),  # d a_i
            g_c * c_prev * f * (1 - f),  # d a_f
            g_c * i * (1 - g * g),  # d a_g
            g_h * tanh_c * o * (1 - o),  # d a_o
        ], axis=1)  # (B, 4H)
        da_ = operand(da, k.precision)  # (B, 4H) as the products take it
        dx[t] = da_ @ w_ih_
        sums.add_ih(da, k.x[t])
        sums.add_hh(da, k.h[t])
        dh = np.where(v, da_ @ w_hh_, dh)
        dc = np.where(v, g_c * f, dc)
    return LSTMGrads(dx, dh, dc, *sums.result())
