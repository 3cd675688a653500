"""One recurrent stack, L layers x D directions of one cell, forward and backward on NumPy arrays.

The single implementation behind `rnnkern.nn.RNN/LSTM/GRU` and `rnnkern.torch`'s modules (via
the operators ``torch.ops.rnnkern.stack`` / ``stack_backward``): the callers check arguments,
pack weights, draw dropout masks and handle ``batch_first``; `forward` and `backward` only run.
Today they run each layer on the packed kernels, its directions in one call
(rnnkern._core.forward_packed_many / backward_packed_many: side by side where each is too small
for a team of threads); a fused whole-stack entry point of the core can replace their bodies without
changing their contract.

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

__all__ = ["Saved", "backward", "dropout_masks", "forward", "reverse", "reverse_index"]

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


def reverse_index(lengths: Array | None, steps: int) -> Array | None:
    """Time index (T, B) reversing each sequence within its own length (padded steps stay put);
    None when there are no lengths (then the reversal is ``a[::-1]``)."""
    if lengths is None:
        return None
    t = np.arange(steps)[:, None]  # (T, 1)
    n = lengths[None, :].astype(np.intp)  # (1, B)
    return np.where(t < n, n - 1 - t, t)  # (T, B)


def reverse(a: Array, rev: Array | None) -> Array:
    """A time-major array (T, B, F) reversed per sequence, as a new C-contiguous array; an
    involution, so also its own inverse."""
    if rev is None:
        return np.ascontiguousarray(a[::-1])
    return a[rev, np.arange(a.shape[1])[None, :]]  # (T, B, F)


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
    n_dir = directions
    n_layers = len(packs) // n_dir
    steps, batch = x.shape[:2]
    hid, out_size = packs[0].hidden_size, packs[0].output_size  # H, P
    traits = BY_ID[packs[0].cell_id]
    lstm = traits["cell_state"]
    check_size("y", steps, batch, n_dir * out_size, itemsize=x.dtype.itemsize)
    if training:  # the largest buffers of one (layer, direction)
        check_size("cache (training=True)", steps + 1, batch,
                   (traits["gates"] + 1) * hid, itemsize=x.dtype.itemsize)
    h0, c0 = (None if s is None else np.ascontiguousarray(s) for s in (h0, c0))
    rev = reverse_index(lengths, steps) if n_dir == 2 else None
    cols = np.arange(batch)[None, :]  # (1, B) with rev: the batch index of a reversal
    h_n = np.empty((len(packs), batch, out_size), x.dtype)  # (L*D, B, P)
    c_n = np.empty((len(packs), batch, hid), x.dtype) if lstm else None  # (L*D, B, H)
    xs: list[Array] = []
    buffers: list[Buffers] = []
    inp = x  # (T, B, F): the current layer's input
    for layer in range(n_layers):
        out = None  # (T, B, D*P): the layer's output
        ks = range(layer * n_dir, (layer + 1) * n_dir)
        xks = [inp if d == 0 else reverse(inp, rev) for d in range(n_dir)]  # kernel time order
        # The directions side by side where each is too small for a team (rnnkern::concurrently)
        results = _core.forward_packed_many([
            (packs[k], xk, None if h0 is None else h0[k], None if c0 is None else c0[k],
             lengths, training) for k, xk in zip(ks, xks)])
        for d, (k, xk, (y, h, c, buf)) in enumerate(zip(ks, xks, results)):
            h_n[k] = h
            if c_n is not None:
                c_n[k] = c
            if training:
                xs.append(xk)
                buffers.append(buf)
            if n_dir == 1:
                out = y
                continue
            if out is None:
                out = np.empty((steps, batch, n_dir * out_size), x.dtype)
            part = slice(d * out_size, (d + 1) * out_size)
            if d == 0:
                out[:, :, part] = y
            elif rev is None:
                out[:, :, part] = y[::-1]
            else:  # scatter through the involution: out[rev[t, b], b] = y[t, b]
                out[rev, cols, part] = y
        assert out is not None
        mask = masks[layer] if layer < len(masks) else None
        if mask is not None:
            out *= mask
        inp = out
    saved = Saved(tuple(packs), xs, buffers, masks, lengths, n_dir) if training else None
    return inp, h_n, c_n, saved


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
    n_dir, packs = saved.directions, saved.packs
    n_layers = len(packs) // n_dir
    steps, batch = saved.xs[0].shape[:2]
    hid, out_size = packs[0].hidden_size, packs[0].output_size  # H, P
    lstm = BY_ID[packs[0].cell_id]["cell_state"]
    rev = reverse_index(saved.lengths, steps) if n_dir == 2 else None
    dtype = saved.xs[0].dtype
    dh_n, dc_n = (None if s is None else np.ascontiguousarray(s) for s in (dh_n, dc_n))
    dh0 = np.empty((len(packs), batch, out_size), dtype)  # (L*D, B, P)
    dc0 = np.empty((len(packs), batch, hid), dtype) if lstm else None  # (L*D, B, H)
    weight_grads: list[tuple[Array | None, ...]] = [()] * len(packs)
    d_out = dy  # (T, B, D*P): gradient of the current layer's output, None: zero
    d_in: Array | None = None  # (T, B, F): gradient of the current layer's input
    for layer in reversed(range(n_layers)):
        d_in = None
        ks = range(layer * n_dir, (layer + 1) * n_dir)
        dys: list[Array | None] = []  # (T, B, P) per direction, in the kernel's time order
        for d in range(n_dir):
            part = None if d_out is None else (
                d_out if n_dir == 1 else d_out[:, :, d * out_size:(d + 1) * out_size])
            dys.append(None if part is None else
                       np.ascontiguousarray(part) if d == 0 else reverse(part, rev))
        results = _core.backward_packed_many([
            (packs[k], saved.xs[k], saved.lengths, saved.buffers[k], dy_k,
             None if dh_n is None else dh_n[k], None if dc_n is None else dc_n[k],
             need_dx or layer > 0, None if into is None else into[k])
            for k, dy_k in zip(ks, dys)])
        for d, (k, (dx, dh, dc, *dws)) in enumerate(zip(ks, results)):
            dh0[k] = dh
            if dc0 is not None:
                dc0[k] = dc
            weight_grads[k] = tuple(dws)
            if dx is None:  # layer 0 without need_dx
                continue
            if d == 0:
                d_in = dx
            elif rev is None:
                d_in += dx[::-1]
            else:
                d_in += reverse(dx, rev)
        if layer == 0:
            break
        assert d_in is not None
        mask = saved.masks[layer - 1] if layer <= len(saved.masks) else None
        d_out = d_in if mask is None else d_in * mask
    return d_in, dh0, dc0, weight_grads
