"""Reference softmax and softmax cross-entropy, both subtracting the row maximum."""
from __future__ import annotations

import numpy as np

from .._api import Array, CrossEntropy, check_logits_targets, check_softmax_input

__all__ = ["softmax", "softmax_cross_entropy"]


def softmax(z: Array) -> Array:
    """exp(z) / sum(exp(z)) over the last axis of z (..., C), float32 or float64."""
    z = check_softmax_input(z)
    if z.shape[-1] == 0:
        return z.copy()
    e = np.exp(z - z.max(axis=-1, keepdims=True))  # (..., C) in (0, 1], no overflow
    p: Array = e / e.sum(axis=-1, keepdims=True)  # (..., C)
    return p


def softmax_cross_entropy(
    logits: Array, targets: Array, *, ignore_index: int = -100
) -> CrossEntropy:
    """Mean cross-entropy of softmax(logits) (N, C) against integer targets (N,).

    loss = mean over the rows whose target is not ignore_index of logsumexp(row) - row[target]
    (0.0 if no row counts); dlogits (N, C) = (softmax - onehot) / N_counted, zero on ignored rows.
    """
    z, t = check_logits_targets(logits, targets, ignore_index)  # (N, C), (N,) int64
    dlogits = np.zeros_like(z)  # (N, C)
    rows = np.flatnonzero(t != ignore_index)  # (n,) counted rows
    n = rows.size
    if n == 0:
        return CrossEntropy(0.0, dlogits)
    shifted = z[rows] - z[rows].max(axis=1, keepdims=True)  # (n, C), max 0 per row
    lse = np.log(np.exp(shifted).sum(axis=1))  # (n,) logsumexp of the shifted rows
    target = t[rows]  # (n,)
    losses = lse - shifted[np.arange(n), target]  # (n,) -log softmax at the target
    p = np.exp(shifted - lse[:, None])  # (n, C) softmax
    p[np.arange(n), target] -= 1
    dlogits[rows] = p / n
    return CrossEntropy(float(losses.sum(dtype=np.float64)) / n, dlogits)
