"""`LuongAttention`: global attention of a decoder over an encoder's outputs (Luong et al. 2015).

For each decoder output h_t (the query) and the encoder outputs hs_1 .. hs_S (the memory):

    score_ts = h_t . (W_a hs_s)                   Luong's "general" score
    a_t      = softmax_s(score_ts)                over the source's own steps only (mask)
    c_t      = sum_s a_ts hs_s                    the context vector
    out_t    = tanh(W_c [c_t ; h_t] + b_c)        the attentional hidden state, fed to the head

All steps t at once (no input feeding), so the decoder runs as one recurrent kernel call and
attention is a few batched products. Forward and backward in NumPy; checked by finite
differences and against the same equations in PyTorch (tests/test_models.py).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np
import numpy.typing as npt

from .. import _blas
from .._api import shape_message
from .linear import ParamModule, Seed, _check_dtype, _check_size, _uniform

__all__ = ["LuongAttention"]

Array = npt.NDArray[Any]


class _Saved(NamedTuple):
    """What a training forward keeps for backward (batch-major)."""

    query: Array  # (B, T, H)
    values: Array  # (B, S, H)
    keys: Array  # (B, S, H): values @ W_a^T
    weights: Array  # (B, T, S): a_ts
    combined: Array  # (B, T, 2H): [c_t ; h_t]
    out: Array  # (B, T, H)


class LuongAttention(ParamModule):
    """Luong's global attention with the "general" score; parameters ``weight_a`` (H, H),
    ``weight_c`` (H, 2H), ``bias_c`` (H,), uniform in +-1/sqrt(fan_in) like `Linear`.

    ``layer(query, values, mask)``: query (T, B, H) (decoder outputs), values (S, B, H)
    (encoder outputs), mask (S, B) bool, True at real (not padded) source steps, at least one
    per sequence (None: all real). Returns out (T, B, H) and the weights (B, T, S), each row a
    distribution over the source steps. ``backward(dout)`` returns (dquery, dvalues) and adds
    the parameter gradients into `grads`.
    """

    def __init__(self, hidden_size: int, dtype: npt.DTypeLike = np.float32,
                 seed: Seed = None) -> None:
        self.hidden_size = hid = _check_size("hidden_size", hidden_size)
        self.dtype = _check_dtype(dtype)
        rng = np.random.default_rng(seed)
        k_a, k_c = 1.0 / math.sqrt(hid), 1.0 / math.sqrt(2 * hid)
        self._init_params({
            "weight_a": _uniform(rng, k_a, "weight_a", (hid, hid), self.dtype),  # (H, H)
            "weight_c": _uniform(rng, k_c, "weight_c", (hid, 2 * hid), self.dtype),  # (H, 2H)
            "bias_c": _uniform(rng, k_c, "bias_c", (hid,), self.dtype),  # (H,)
        })
        self._saved: Optional[_Saved] = None

    def _check(self, name: str, a: object, symbols: Tuple[str, str, str],
               expected: Tuple[Optional[int], Optional[int], int]) -> Array:
        arr = self._check_input(name, a)
        if arr.ndim != 3 or any(e is not None and d != e for d, e in zip(arr.shape, expected)):
            raise ValueError(shape_message(name, symbols, expected, arr.shape))
        return arr

    def __call__(self, query: Array, values: Array, mask: Optional[Array] = None,
                 training: bool = True) -> Tuple[Array, Array]:
        """query (T, B, H), values (S, B, H), mask (S, B) -> out (T, B, H), weights (B, T, S)."""
        with _blas.one_thread():  # NumPy's products on one BLAS thread, as in Linear
            return self._forward(query, values, mask, training)

    def backward(self, dout: Array) -> Tuple[Array, Array]:
        """dout (T, B, H) of the last training forward -> (dquery (T, B, H), dvalues (S, B, H))."""
        with _blas.one_thread():
            return self._backward(dout)

    def _forward(self, query: Array, values: Array, mask: Optional[Array],
                 training: bool) -> Tuple[Array, Array]:
        hid = self.hidden_size
        query = self._check("query", query, ("T", "B", "H"), (None, None, hid))
        values = self._check("values", values, ("S", "B", "H"), (None, query.shape[1], hid))
        q = query.transpose(1, 0, 2)  # (B, T, H)
        v = values.transpose(1, 0, 2)  # (B, S, H)
        keys = v @ self.params["weight_a"].T  # (B, S, H)
        scores = q @ keys.transpose(0, 2, 1)  # (B, T, S)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != np.bool_ or mask.shape != values.shape[:2]:
                raise ValueError(f"mask: expected a bool array of shape (S, B) = "
                                 f"{values.shape[:2]}, got {mask.dtype} {mask.shape}")
            if not mask.any(axis=0).all():
                raise ValueError("mask: every sequence needs at least one source step")
            scores = np.where(mask.T[:, None, :], scores, -np.inf)  # (B, T, S)
        weights = np.exp(scores - scores.max(axis=2, keepdims=True))  # (B, T, S)
        weights /= weights.sum(axis=2, keepdims=True)
        context = weights @ v  # (B, T, H)
        combined = np.concatenate([context, q], axis=2)  # (B, T, 2H)
        out = np.tanh(combined @ self.params["weight_c"].T + self.params["bias_c"])  # (B, T, H)
        self._saved = _Saved(q, v, keys, weights, combined, out) if training else None
        return out.transpose(1, 0, 2), weights

    def _backward(self, dout: Array) -> Tuple[Array, Array]:
        s = self._saved
        if s is None:
            raise RuntimeError(
                "backward: no saved forward; call the layer with training=True first")
        batch, steps, hid = s.out.shape
        dout = self._check("dout", dout, ("T", "B", "H"), (steps, batch, hid))
        dpre = dout.transpose(1, 0, 2) * (1.0 - s.out * s.out)  # (B, T, H)
        self.grads["weight_c"] += dpre.reshape(-1, hid).T @ s.combined.reshape(-1, 2 * hid)
        self.grads["bias_c"] += dpre.sum(axis=(0, 1))
        dcombined = dpre @ self.params["weight_c"]  # (B, T, 2H)
        dcontext, dq = dcombined[:, :, :hid], dcombined[:, :, hid:]  # (B, T, H) each
        dweights = dcontext @ s.values.transpose(0, 2, 1)  # (B, T, S)
        dv = s.weights.transpose(0, 2, 1) @ dcontext  # (B, S, H)
        dscores = s.weights * (dweights - (dweights * s.weights).sum(axis=2, keepdims=True))
        dq = dq + dscores @ s.keys  # (B, T, H)
        dkeys = dscores.transpose(0, 2, 1) @ s.query  # (B, S, H)
        self.grads["weight_a"] += dkeys.reshape(-1, hid).T @ s.values.reshape(-1, hid)
        dv += dkeys @ self.params["weight_a"]  # (B, S, H)
        return dq.transpose(1, 0, 2), dv.transpose(1, 0, 2)

    def __repr__(self) -> str:
        extra = "" if self.dtype == np.dtype(np.float32) else f", dtype={self.dtype}"
        return f"LuongAttention({self.hidden_size}{extra})"
