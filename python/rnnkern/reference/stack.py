"""Reference of a layer stack: L layers x D directions of one reference cell, written out plainly.

Layout as PyTorch's (and rnnkern.nn's, rnnkern._stack's): (layer, direction) k = l*D + d; the
reverse direction runs each sequence backwards within its own length; a layer's output is
(T, B, D*H), the forward direction's H features first; dropout multiplies each layer's output
but the last's by a given mask. The standard rnnkern._stack (under rnnkern.nn and rnnkern.torch)
is tested against.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .._api import Array
from .gru import gru_backward, gru_forward
from .lstm import lstm_backward, lstm_forward
from .rnn import rnn_backward, rnn_forward

__all__ = ["StackCache", "stack_backward", "stack_forward"]

# (w_ih, w_hh, b_ih, b_hh) of one (layer, direction), biases None without bias
Weights = tuple[Array, Array, Optional[Array], Optional[Array]]


@dataclass(frozen=True, eq=False)
class StackCache:
    """What a reference stack forward keeps for its backward."""

    cell: str  # "rnn", "lstm" or "gru"
    directions: int  # D
    caches: list[Any]  # L*D reference cell caches
    masks: list[Array | None]  # L-1 dropout masks (T, B, D*H), None: no dropout there
    lengths: Array | None  # (B,) int64


def _flip(a: Array, lengths: Array | None) -> Array:
    """a (T, B, F) with each sequence b's first lengths[b] steps in reverse order."""
    out = a.copy()
    for b in range(a.shape[1]):
        n = a.shape[0] if lengths is None else int(lengths[b])
        out[:n, b] = a[:n, b][::-1]
    return out


def _cell_forward(cell: str, options: dict[str, Any], x: Array, h0: Array | None,
                  c0: Array | None, weights: Weights, lengths: Array | None) -> Any:
    if cell == "lstm":
        return lstm_forward(x, h0, c0, *weights, lengths=lengths)
    forward = rnn_forward if cell == "rnn" else gru_forward
    return forward(x, h0, *weights, lengths=lengths, **options)


def stack_forward(cell: str, x: Array, h0: Array | None, c0: Array | None,
                  weights: Sequence[Weights], *, directions: int = 1,
                  lengths: Array | None = None, masks: Sequence[Array | None] = (),
                  **options: Any) -> tuple[Array, Array, Array | None, StackCache]:
    """Run the stack (training: the cache is returned).

    x (T, B, I); h0, c0 (L*D, B, H) or None (zeros; c0 for lstm only); weights: L*D tuples
    (w_ih, w_hh, b_ih, b_hh) of the cell, k = l*D + d; lengths (B,) in 1..T or None; masks: the
    dropout mask (T, B, D*H) of each layer's output but the last's (None or missing: none);
    options: the cell's (nonlinearity for rnn, linear_before_reset for gru).
    Returns y (T, B, D*H), h_n (L*D, B, H), c_n (L*D, B, H) or None, and the cache.
    """
    n_layers = len(weights) // directions
    lens = None if lengths is None else np.asarray(lengths, dtype=np.int64)
    caches, h_n, c_n = [], [], []
    inp = x  # (T, B, F)
    for layer in range(n_layers):
        outs = []  # D arrays (T, B, H)
        for d in range(directions):
            k = layer * directions + d
            xk = inp if d == 0 else _flip(inp, lens)
            res = _cell_forward(cell, options, xk, None if h0 is None else h0[k],
                                None if c0 is None else c0[k], weights[k], lens)
            outs.append(res.y if d == 0 else _flip(res.y, lens))
            h_n.append(res.h_n)
            if cell == "lstm":
                c_n.append(res.c_n)
            caches.append(res.cache)
        inp = np.concatenate(outs, axis=2)  # (T, B, D*H)
        mask = masks[layer] if layer < min(len(masks), n_layers - 1) else None
        if mask is not None:
            inp = inp * mask
    kept = [masks[i] if i < len(masks) else None for i in range(n_layers - 1)]
    return (inp, np.stack(h_n), np.stack(c_n) if c_n else None,
            StackCache(cell, directions, caches, kept, lens))


def stack_backward(cache: StackCache, dy: Array | None, dh_n: Array | None = None,
                   dc_n: Array | None = None
                   ) -> tuple[Array, Array, Array | None, list[tuple[Array | None, ...]]]:
    """Gradients of stack_forward: dy (T, B, D*H), dh_n, dc_n (L*D, B, H) or None (zeros).

    Returns dx (T, B, I), dh0 (L*D, B, H), dc0 (L*D, B, H) or None, and per (layer, direction)
    (dw_ih, dw_hh, db_ih, db_hh).
    """
    D = cache.directions
    n_layers = len(cache.caches) // D
    dh0: list[Array] = [np.empty(0)] * len(cache.caches)
    dc0: list[Array] = list(dh0)
    grads: list[tuple[Array | None, ...]] = [()] * len(cache.caches)
    d_out = dy  # (T, B, D*H)
    dx = None
    for layer in reversed(range(n_layers)):
        dx = None
        for d in range(D):
            k = layer * D + d
            H = cache.caches[k].shape[3]
            dy_k = None if d_out is None else d_out[:, :, d * H:(d + 1) * H]
            if d == 1 and dy_k is not None:
                dy_k = _flip(dy_k, cache.lengths)
            dh_k = None if dh_n is None else dh_n[k]
            g: Any
            if cache.cell == "lstm":
                g = lstm_backward(cache.caches[k], dy_k, dh_k, None if dc_n is None else dc_n[k])
                dc0[k] = g.dc0
            else:
                g = (rnn_backward if cache.cell == "rnn" else gru_backward)(
                    cache.caches[k], dy_k, dh_k)
            dh0[k] = g.dh0
            grads[k] = (g.dw_ih, g.dw_hh, g.db_ih, g.db_hh)
            dx_k = g.dx if d == 0 else _flip(g.dx, cache.lengths)
            dx = dx_k if dx is None else dx + dx_k
        mask = cache.masks[layer - 1] if layer > 0 else None
        d_out = dx if mask is None else dx * mask
    assert dx is not None
    return dx, np.stack(dh0), np.stack(dc0) if cache.cell == "lstm" else None, grads
