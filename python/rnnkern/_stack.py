"""One recurrent stack, L layers x D directions of one cell, forward and backward on NumPy arrays.

The single implementation behind `rnnkern.nn.RNN/LSTM/GRU` and `rnnkern.torch`'s modules (via
the operators ``torch.ops.rnnkern.stack`` / ``stack_backward``): the callers check arguments,
pack weights, draw dropout masks and handle ``batch_first``; `forward` and `backward` only run.
Each is one call of the core's whole-stack entry point (rnnkern._core.stack_forward /
stack_backward, rnnkern::stack_forward in C++): the layers one after another, a layer's
directions side by side where each is too small for a team of threads, the reversal, the
directions' columns and the dropout masks applied in C++ between them.

Layout as PyTorch's: (layer, direction) k = l*D + d; the reverse direction (d = 1) runs each
sequence backwards within its own length; a layer's output is (T, B, D*P), the forward
direction's P features first; dropout multiplies each layer's output but the last's by a mask.
P is the size of h: H, or an LSTM projection's (PyTorch's proj_size); c stays (.., H).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from . import _core
from ._api import Array, check_size
from ._cells import BY_ID

__all__ = ["Saved", "backward", "dropout_masks", "forward"]

# The kernels' buffers of one (layer, direction), kernel time order: hs (T+1, B, P), cs (T+1, B,
# H) (lstm), gates (T, B, G*H) (lstm, gru), aux (T, B, H) (gru, projected lstm); None where the
# cell has none; then, for a layer-normalized lstm only, ln (T, B, 9H + 3).
Buffers = tuple[Any, ...]


class Saved(NamedTuple):
    """What a training `forward` keeps for `backward` (all of it the stack's own memory but
    xs[0], which is the caller's x)."""

    packs: tuple[Any, ...]  # L*D _core.Pack, those of the forward
    xs: list[Array]  # L*D inputs (T, B, F) as each (layer, direction)'s kernel read them
    buffers: list[Buffers]  # L*D kernel buffers
    masks: Sequence[Array | None]  # L-1 dropout masks (T, B, D*P) on layer outputs, or empty
    lengths: Array | None  # (B,) int64
    directions: int  # D


def dropout_masks(rng: np.random.Generator, p: float, layers: int, shape: tuple[int, ...],
                  dtype: np.dtype[Any]) -> list[Array]:
    """layers - 1 inverted-dropout masks of ``shape`` (T, B, D*H): 0 with probability p, else
    1/(1-p) (all 0 if p == 1), drawn from ``rng`` one layer after another."""
    scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0
    return [((rng.random(shape) >= p) * scale).astype(dtype) for _ in range(layers - 1)]


def forward(packs: Sequence[Any], directions: int, x: Array, h0: Array | None,
            c0: Array | None, lengths: Array | None, masks: Sequence[Array | None],
            training: bool) -> tuple[Array, Array, Array | None, Saved | None]:
    """Run the stack.

    packs: L*D _core.Pack (k = l*D + d) of one cell, dtype, H and P; x (T, B, I) C-contiguous,
    kept (not copied) in the result's Saved; h0 (L*D, B, P), c0 (L*D, B, H) or None (zeros;
    c0: lstm); lengths (B,) int64 in 1..T or None; masks: empty or L-1 arrays (T, B, D*P)
    (None: no dropout after that layer). Returns y (T, B, D*P) zero past each length, h_n
    (L*D, B, P), c_n (L*D, B, H) (lstm, else None), and Saved if ``training``.
    """
    steps, batch = x.shape[:2]
    hid, out_size = packs[0].hidden_size, packs[0].output_size  # H, P
    check_size("y", steps, batch, directions * out_size, itemsize=x.dtype.itemsize)
    if training:  # the largest buffers of one (layer, direction)
        check_size("cache (training=True)", steps + 1, batch,
                   (BY_ID[packs[0].cell_id]["gates"] + 1) * hid, itemsize=x.dtype.itemsize)
    h0, c0 = (None if s is None else np.ascontiguousarray(s) for s in (h0, c0))
    masks = [None if m is None else np.ascontiguousarray(m) for m in masks]
    y, h_n, c_n, xs, buffers = _core.stack_forward(list(packs), directions, x, h0, c0, lengths,
                                                   masks, training)
    saved = None
    if training:
        assert xs is not None and buffers is not None
        saved = Saved(tuple(packs), xs, buffers, masks, lengths, directions)
    return y, h_n, c_n, saved


def backward(saved: Saved, dy: Array | None, dh_n: Array | None, dc_n: Array | None,
             need_dx: bool = True, into: Sequence[tuple[Array | None, ...]] | None = None
             ) -> tuple[Array | None, Array, Array | None, list[tuple[Array | None, ...]]]:
    """Gradients of a training `forward`: dy (T, B, D*P), dh_n (L*D, B, P), dc_n (L*D, B, H) or
    None (zeros), dtypes of the forward. Returns dx (T, B, I) (None if not ``need_dx``: the
    first layer's input product is skipped), dh0 (L*D, B, P), dc0 (L*D, B, H) (lstm, else None)
    and per (layer, direction) (dw_ih, dw_hh, db_ih, db_hh) (biases None without bias), then
    the LSTM variants' present ones: dw_hr, dw_peep, dln_gates, dln_cell.

    into: None, or per (layer, direction) a tuple of arrays in that order (C-contiguous, the
    dtype, None where the weights have none) that the kernels add the weight gradients to; then
    the weight gradients returned are empty tuples (no new arrays, no second pass to add them)."""
    dy, dh_n, dc_n = (None if s is None else np.ascontiguousarray(s) for s in (dy, dh_n, dc_n))
    dx, dh0, dc0, weight_grads = _core.stack_backward(
        list(saved.packs), saved.directions, saved.xs, saved.lengths, saved.buffers,
        list(saved.masks), dy, dh_n, dc_n, need_dx, None if into is None else list(into))
    return dx, dh0, dc0, weight_grads
