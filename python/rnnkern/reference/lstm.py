"""Reference LSTM (PyTorch's gate order i, f, g, o) and its variants (docs/lstm_variants.md).

    a = N_ih(W_ih x_t) + b_ih + N_hh(W_hh h_{t-1}) + b_hh               (B, 4H) blocks i, f, g, o
    i = sigma(a_i + p_i * c_{t-1}),  f = sigma(a_f + p_f * c_{t-1}),  g = tanh(a_g)
    c_t = f * c_{t-1} + i * g
    o = sigma(a_o + p_o * c_t)
    m_t = o * tanh(N_c(c_t))                                            (B, H)
    h_t = W_hr m_t with a projection w_hr (P, H), else m_t              (B, P)

Peepholes p = w_peep (3, H) (rows p_i, p_f, p_o), zero without. Layer normalization (Ba et al.
2016): N_ih, N_hh normalize each 4H-vector and scale it by ln_gates[0], ln_gates[1] (the biases
shift it); N_c normalizes c_t over H, scales by ln_cell[0] and shifts by ln_cell[1]; identities
without. The state carried to the next step is c_t, not N_c(c_t).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._api import (
    Array,
    LSTMGrads,
    LSTMOutput,
    check_flag,
    check_forward,
    check_precision,
    lstm_grads,
)
from ._common import (
    Cache,
    WeightGrads,
    bias_or_zeros,
    make_cache,
    operand,
    sigmoid,
    state_or_zeros,
    take_backward_args,
    valid_steps,
)

__all__ = ["LN_EPS", "lstm_backward", "lstm_forward"]

#: The epsilon of every layer norm: (z - mean) / sqrt(var + LN_EPS) (PyTorch's LayerNorm default).
LN_EPS = 1e-5


def _split(a: Array, H: int) -> tuple[Array, Array, Array, Array]:
    """The four (B, H) gate blocks of a (B, 4H) array, in the order i, f, g, o."""
    return a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]


def _normalize(z: Array) -> tuple[Array, Array]:
    """Layer norm without gain and shift over the last axis: (z_hat, rstd), z_hat like z,
    rstd (B, 1) = 1 / sqrt(var + LN_EPS)."""
    d = z - z.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt((d * d).mean(axis=-1, keepdims=True) + LN_EPS)  # (B, 1)
    return d * rstd, rstd


def _normalize_backward(dz_hat: Array, z_hat: Array, rstd: Array) -> Array:
    """dL/dz from dL/dz_hat for (z_hat, rstd) = _normalize(z)."""
    dz: Array = rstd * (dz_hat - dz_hat.mean(axis=-1, keepdims=True)
                        - z_hat * (dz_hat * z_hat).mean(axis=-1, keepdims=True))
    return dz


class _Step(NamedTuple):
    """One step's values, recomputed by the backward from the cached x_t, h_{t-1}, c_{t-1}."""

    gates: Array  # (B, 4H) activated i, f, g, o
    c: Array  # (B, H) c_t
    n: Array  # (B, H) N_c(c_t)
    m: Array  # (B, H) o * tanh(n)
    h: Array  # (B, P)
    norms: tuple[tuple[Array, Array], ...]  # layer norm: (z_hat, rstd) of W_ih x, W_hh h, c_t


def _step(x_t: Array, h: Array, c_prev: Array, w_ih: Array, w_hh: Array, b: Array,
          w_hr: Array | None, w_peep: Array | None, ln_gates: Array | None,
          ln_cell: Array | None, precision: str) -> _Step:
    """The cell: x_t (B, I), h (B, P), c_prev (B, H), b (4H,) = b_ih + b_hh; w_ih, w_hh (and
    w_hr) as the products take them (see operand), x_t and h rounded here."""
    H = c_prev.shape[1]
    z_ih = operand(x_t, precision) @ w_ih.T  # (B, 4H)
    z_hh = operand(h, precision) @ w_hh.T  # (B, 4H)
    norms: tuple[tuple[Array, Array], ...] = ()
    if ln_gates is not None:
        norms = (_normalize(z_ih), _normalize(z_hh))
        z_ih, z_hh = norms[0][0] * ln_gates[0], norms[1][0] * ln_gates[1]
    a_i, a_f, a_g, a_o = _split(z_ih + z_hh + b, H)
    if w_peep is not None:
        a_i, a_f = a_i + w_peep[0] * c_prev, a_f + w_peep[1] * c_prev
    i, f, g = sigmoid(a_i), sigmoid(a_f), np.tanh(a_g)  # (B, H) each
    c = f * c_prev + i * g  # (B, H)
    o = sigmoid(a_o if w_peep is None else a_o + w_peep[2] * c)  # (B, H)
    n = c
    if ln_cell is not None:
        norms += (_normalize(c),)
        n = norms[2][0] * ln_cell[0] + ln_cell[1]
    m = o * np.tanh(n)  # (B, H)
    return _Step(np.concatenate([i, f, g, o], axis=1), c, n, m,
                 m if w_hr is None else operand(m, precision) @ w_hr.T, norms)


def _cached_step(k: Cache, t: int) -> _Step:
    """Step t of the forward that made the cache, recomputed."""
    assert k.c is not None and k.b is not None
    q = k.precision
    return _step(k.x[t], k.h[t], k.c[t], operand(k.w_ih, q), operand(k.w_hh, q), k.b,
                 None if k.w_hr is None else operand(k.w_hr, q), k.w_peep, k.ln_gates,
                 k.ln_cell, q)


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
    w_hr: Array | None = None,
    w_peep: Array | None = None,
    ln_gates: Array | None = None,
    ln_cell: Array | None = None,
    precision: str = "float",
) -> LSTMOutput:
    """Run an LSTM over x (T, B, I).

    h0 (B, P), c0 (B, H) or None (zeros); w_ih (4H, I), w_hh (4H, P), b_ih/b_hh (4H,) or both
    None; lengths None or int (B,) in 1..T. Variants (module docstring): w_hr (P, H) projection
    (P = H without), w_peep (3, H) peepholes, ln_gates (2, 4H) and ln_cell (2, H) layer
    normalization. Returns LSTMOutput(y (T, B, P) zero past each length, h_n (B, P), c_n (B, H)
    after each sequence's last step, cache or None when training=False). precision "bf16"
    rounds both operands of every product to bfloat16 (see operand).
    """
    c = check_forward("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, w_hr=w_hr,
                      w_peep=w_peep, ln_gates=ln_gates, ln_cell=ln_cell)
    training = check_flag("training", training)
    prec = check_precision(precision, c.dtype, training)
    w_ih_, w_hh_ = operand(c.w_ih, prec, True), operand(c.w_hh, prec, True)  # (4H, I), (4H, P)
    w_hr_ = None if c.w_hr is None else operand(c.w_hr, prec, True)  # (P, H)
    b = bias_or_zeros(c.b_ih, c) + bias_or_zeros(c.b_hh, c)  # (4H,)
    valid = valid_steps(c)  # (T, B, 1)
    y = np.zeros((c.T, c.B, c.P), c.dtype)  # (T, B, P)
    h = state_or_zeros(c.h0, c, c.P)  # (B, P)
    cell = state_or_zeros(c.c0, c)  # (B, H)
    hs, cs, gates = [h], [cell], []  # per step (B, P), (B, H), (B, 4H); training only
    for t in range(c.T):
        s = _step(c.x[t], h, cell, w_ih_, w_hh_, b, w_hr_, c.w_peep, c.ln_gates, c.ln_cell, prec)
        y[t] = np.where(valid[t], s.h, 0)
        h = np.where(valid[t], s.h, h)
        cell = np.where(valid[t], s.c, cell)
        if training:
            hs.append(h)
            cs.append(cell)
            gates.append(s.gates)
    cache = None
    if training:
        cache = make_cache("lstm", "", c, valid, hs, gates, cs=cs, b=b, precision=prec)
    return LSTMOutput(y, h.copy(), cell.copy(), cache)


def lstm_backward(
    cache: object, dy: Array | None, dh_n: Array | None = None, dc_n: Array | None = None
) -> LSTMGrads:
    """Backpropagation through time for :func:`lstm_forward`.

    dy (T, B, P) or None, dh_n (B, P) and dc_n (B, H) or None (zero). Returns LSTMGrads(dx
    (T, B, I), dh0 (B, P), dc0 (B, H), dw_ih (4H, I), dw_hh (4H, P), db_ih, db_hh (4H,) or None
    without biases), followed by dw_hr (P, H), dw_peep (3, H), dln_gates (2, 4H), dln_cell
    (2, H) for the variants the forward had, in that order.
    """
    # dy (T, B, P); dh (B, P), dc (B, H): dL/dh_t, dL/dc_t
    k, dy_, dh, dc = take_backward_args("lstm", cache, dy, dh_n, dc_n)
    assert k.c is not None and k.b is not None
    T, _, _, H = k.shape
    q = k.precision
    w_ih_, w_hh_ = operand(k.w_ih, q), operand(k.w_hh, q)  # as the products take them
    sums = WeightGrads(k)
    extras = {f"d{n}": np.zeros(a.shape, k.dtype)  # each shaped like its argument
              for n, a in (("w_hr", k.w_hr), ("w_peep", k.w_peep), ("ln_gates", k.ln_gates),
                           ("ln_cell", k.ln_cell)) if a is not None}
    dx = np.zeros(k.x.shape, k.dtype)  # (T, B, I)
    for t in reversed(range(T)):
        v = k.valid[t]  # (B, 1)
        s = _cached_step(k, t)
        i, f, g, o = _split(s.gates, H)  # (B, H) each
        c_prev = k.c[t]  # (B, H)
        g_h = np.where(v, dh + dy_[t], 0)  # (B, P) into h_t, 0 if padded
        g_m = g_h  # (B, H) into m_t
        if k.w_hr is not None:
            extras["dw_hr"] += operand(g_h, q).T @ operand(s.m, q)
            g_m = operand(g_h, q) @ operand(k.w_hr, q)
        tanh_n = np.tanh(s.n)  # (B, H)
        da_o = g_m * tanh_n * o * (1 - o)  # (B, H)
        g_n = g_m * o * (1 - tanh_n * tanh_n)  # (B, H) into N_c(c_t)
        if k.ln_cell is not None:
            n_hat, rstd = s.norms[2]
            extras["dln_cell"] += np.stack([(g_n * n_hat).sum(axis=0), g_n.sum(axis=0)])
            g_n = _normalize_backward(g_n * k.ln_cell[0], n_hat, rstd)
        g_c = np.where(v, dc, 0) + g_n  # (B, H) into c_t
        if k.w_peep is not None:
            g_c = g_c + da_o * k.w_peep[2]
        da_i = g_c * g * i * (1 - i)  # (B, H)
        da_f = g_c * c_prev * f * (1 - f)  # (B, H)
        da = np.concatenate([da_i, da_f, g_c * i * (1 - g * g), da_o], axis=1)  # (B, 4H)
        dz_ih = dz_hh = da  # (B, 4H) into W_ih x_t, W_hh h_{t-1}
        if k.ln_gates is not None:
            (z_ih, r_ih), (z_hh, r_hh) = s.norms[:2]
            extras["dln_gates"] += np.stack([(da * z_ih).sum(axis=0), (da * z_hh).sum(axis=0)])
            dz_ih = _normalize_backward(da * k.ln_gates[0], z_ih, r_ih)
            dz_hh = _normalize_backward(da * k.ln_gates[1], z_hh, r_hh)
        dx[t] = operand(dz_ih, q) @ w_ih_
        sums.add_ih(dz_ih, k.x[t], d_bias=da)
        sums.add_hh(dz_hh, k.h[t], d_bias=da)
        dc_prev = g_c * f  # (B, H)
        if k.w_peep is not None:
            extras["dw_peep"] += np.stack([(da_i * c_prev).sum(axis=0),
                                           (da_f * c_prev).sum(axis=0),
                                           (da_o * s.c).sum(axis=0)])
            dc_prev = dc_prev + da_i * k.w_peep[0] + da_f * k.w_peep[1]
        dh = np.where(v, operand(dz_hh, q) @ w_hh_, dh)
        dc = np.where(v, dc_prev, dc)
    return lstm_grads((dx, dh, dc, *sums.result()), extras)
