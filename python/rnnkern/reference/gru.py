"""Reference GRU (PyTorch's gate order r, z, n), in both common forms.

    r = sigma(W_ir x + b_ir + W_hr h + b_hr),  z = sigma(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))      linear_before_reset=True (PyTorch)
    n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)      linear_before_reset=False (ONNX default)
    h' = (1 - z) * n + z * h
"""
from __future__ import annotations

import numpy as np

from .._api import Array, RNNGrads, RNNOutput, check_flag, check_forward, check_precision
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

__all__ = ["gru_backward", "gru_forward"]

_FORMS = {True: "linear_before_reset", False: "reset_before"}


def gru_forward(
    x: Array,
    h0: Array | None,
    w_ih: Array,
    w_hh: Array,
    b_ih: Array | None,
    b_hh: Array | None,
    *,
    lengths: Array | None = None,
    training: bool = True,
    linear_before_reset: bool = True,
    precision: str = "float",
) -> RNNOutput:
    """Run a GRU over x (T, B, I).

    h0 (B, H) or None (zeros); w_ih (3H, I), w_hh (3H, H), b_ih/b_hh (3H,) or both None;
    lengths None or int (B,) in 1..T. Returns RNNOutput(y (T, B, H) zero past each length,
    h_n (B, H) after each sequence's last step, cache or None when training=False).
    """
    c = check_forward("gru", x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths)
    training = check_flag("training", training)
    lbr = check_flag("linear_before_reset", linear_before_reset)
    prec = check_precision(precision, c.dtype, training)  # operands as the products take them
    H = c.H
    w_ih_, w_hh_ = operand(c.w_ih, prec, True), operand(c.w_hh, prec, True)  # (3H, I), (3H, H)
    b_ih_, b_hh_ = bias_or_zeros(c.b_ih, c), bias_or_zeros(c.b_hh, c)  # (3H,) each
    w_hn, b_hn = w_hh_[2 * H:], b_hh_[2 * H:]  # (H, H), (H,)
    valid = valid_steps(c)  # (T, B, 1)
    y = np.zeros((c.T, c.B, H), c.dtype)  # (T, B, H)
    h = state_or_zeros(c.h0, c)  # (B, H)
    hs, gates, hns = [h], [], []  # per step (B, H), (B, 3H), (B, H); training only
    for t in range(c.T):
        gi = operand(c.x[t], prec) @ w_ih_.T + b_ih_  # (B, 3H) input side of every gate
        gh = operand(h, prec) @ w_hh_.T + b_hh_  # (B, 3H) hidden side (n block unused if not lbr)
        r = sigmoid(gi[:, :H] + gh[:, :H])  # (B, H)
        z = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])  # (B, H)
        hn = gh[:, 2 * H:]  # (B, H) W_hn h + b_hn
        if lbr:
            n = np.tanh(gi[:, 2 * H:] + r * hn)  # (B, H)
        else:
            n = np.tanh(gi[:, 2 * H:] + operand(r * h, prec) @ w_hn.T + b_hn)  # (B, H)
        h_new = (1 - z) * n + z * h  # (B, H)
        y[t] = np.where(valid[t], h_new, 0)
        h = np.where(valid[t], h_new, h)
        if training:
            hs.append(h)
            gates.append(np.concatenate([r, z, n], axis=1))
            hns.append(hn)
    cache = None
    if training:
        cache = make_cache("gru", _FORMS[lbr], c, valid, hs, gates, hns=hns if lbr else None,
                           precision=prec)
    return RNNOutput(y, h.copy(), cache)


def gru_backward(cache: object, dy: Array | None, dh_n: Array | None = None) -> RNNGrads:
    """Backpropagation through time for :func:`gru_forward` (either form).

    dy (T, B, H) or None, dh_n (B, H) or None (zero). Returns RNNGrads(dx (T, B, I), dh0 (B, H),
    dw_ih (3H, I), dw_hh (3H, H), db_ih, db_hh (3H,) or None without biases).
    """
    k, dy_, dh, _ = take_backward_args("gru", cache, dy, dh_n)  # (T, B, H), (B, H) dL/dh_t
    lbr = k.variant == _FORMS[True]
    T, _, _, H = k.shape
    q = k.precision
    w_ih_, w_hh_ = operand(k.w_ih, q), operand(k.w_hh, q)  # as the products take them
    w_rz, w_hn = w_hh_[:2 * H], w_hh_[2 * H:]  # (2H, H), (H, H)
    sums = WeightGrads(k)
    dx = np.zeros(k.x.shape, k.dtype)  # (T, B, I)
    for t in reversed(range(T)):
        v = k.valid[t]  # (B, 1)
        h_prev = k.h[t]  # (B, H)
        r, z, n = k.gates[t][:, :H], k.gates[t][:, H:2 * H], k.gates[t][:, 2 * H:]  # (B, H)
        g = np.where(v, dh + dy_[t], 0)  # (B, H) into h_t, 0 if padded
        da_n = g * (1 - z) * (1 - n * n)  # (B, H) d of tanh's argument
        da_z = g * (h_prev - n) * z * (1 - z)  # (B, H)
        dh_prev = g * z  # (B, H) the direct path z * h
        if lbr:
            assert k.hn is not None
            da_r = da_n * k.hn[t] * r * (1 - r)  # (B, H)
            d_gi = np.concatenate([da_r, da_z, da_n], axis=1)  # (B, 3H) d(W_ih x + b_ih)
            d_gh = np.concatenate([da_r, da_z, da_n * r], axis=1)  # (B, 3H) d(W_hh h + b_hh)
            sums.add_hh(d_gh, h_prev)
            dh_prev = dh_prev + operand(d_gh, q) @ w_hh_
        else:
            d_rh = operand(da_n, q) @ w_hn  # (B, H) d(r * h)
            da_r = d_rh * h_prev * r * (1 - r)  # (B, H)
            d_gi = np.concatenate([da_r, da_z, da_n], axis=1)  # (B, 3H)
            d_rz = d_gi[:, :2 * H]  # (B, 2H) d(W_hr h + b_hr, W_hz h + b_hz)
            sums.add_hh(d_rz, h_prev, slice(0, 2 * H))
            sums.add_hh(da_n, r * h_prev, slice(2 * H, 3 * H))
            dh_prev = dh_prev + operand(d_rz, q) @ w_rz + d_rh * r
        dx[t] = operand(d_gi, q) @ w_ih_
        sums.add_ih(d_gi, k.x[t])
        dh = np.where(v, dh_prev, dh)
    return RNNGrads(dx, dh, *sums.result())
