"""Accuracy of the kernels' vector tanh and sigmoid, under every ISA the machine supports.

An RNN step with W_hh = 0 and one input per batch row gives y = f(x) elementwise, so the
nonlinearities are measured on their own: the float32 error in units in the last place (ulp) of
the exact value, the float64 error relative to it, and the exact properties (range, oddness,
saturation, NaN) that the recurrent math relies on.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import rnnkern

ISAS = rnnkern.config()["supported_isas"]
H = 16  # every unit gets the same input: 16 lanes checked per value


def _grid(dtype: Any) -> np.ndarray:
    small = np.logspace(-30, 0, 2001)
    dense = np.linspace(0, 20, 40001)
    pos = np.concatenate([[0.0], small, dense, [30.0, 88.0, 100.0, 1e4, 1e30]])
    return np.concatenate([pos, -pos]).astype(dtype)


def _apply(nonlinearity: str, x: np.ndarray, isa: str) -> np.ndarray:
    """rnn_forward with x (1, B, 1), w_ih ones (H, 1), w_hh zero: y[0, b, j] = f(x[b])."""
    dtype = x.dtype
    previous = rnnkern.config()["isa"]
    rnnkern.set_isa(isa)
    try:
        out = rnnkern.rnn_forward(x.reshape(1, -1, 1), None, np.ones((H, 1), dtype),
                                  np.zeros((H, H), dtype), None, None,
                                  nonlinearity=nonlinearity, training=False)
    finally:
        rnnkern.set_isa(previous)
    y = out.y[0]
    np.testing.assert_array_equal(y, np.broadcast_to(y[:, :1], y.shape))  # every lane the same
    return y[:, 0]


def _exact(nonlinearity: str, x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    if nonlinearity == "tanh":
        return np.tanh(x64)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x64))


# float32: the largest error in ulp of the exact value measured on this grid was 4.9 (tanh,
# the rational fit, scalar ISA without FMA) and 2.2 (sigmoid); float64: 2.2e-16 relative.
ULP32 = {"tanh": 8, "sigmoid": 4}
REL64 = 1e-15


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("nonlinearity", ["tanh", "sigmoid"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_accuracy(isa: str, nonlinearity: str, dtype: Any) -> None:
    x = _grid(dtype)
    y = _apply(nonlinearity, x, isa).astype(np.float64)
    e = _exact(nonlinearity, x)
    if dtype == np.float32:
        # below 2**-100 (sigmoid of x < -69) only absolutely: 1 / (1 + exp(-x)) ends in
        # float32's subnormal range there
        ulp = np.spacing(np.maximum(np.abs(e), 2.0**-100).astype(np.float32)).astype(np.float64)
        err = np.abs(y - e) / ulp
        assert err.max() <= ULP32[nonlinearity], (nonlinearity, x[err.argmax()], err.max())
    else:
        # relative to the value, but sigmoid of a large negative x only absolutely (its
        # result is tiny and the formula 1 / (1 + exp(-x)) rounds exp's relative error)
        err = np.abs(y - e) / np.maximum(np.abs(e), 1e-300 if nonlinearity == "tanh" else 1.0)
        assert err.max() <= REL64, (nonlinearity, x[err.argmax()], err.max())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_properties(isa: str, dtype: Any) -> None:
    x = _grid(dtype)
    t = _apply("tanh", x, isa)
    s = _apply("sigmoid", x, isa)
    n = len(x) // 2
    np.testing.assert_array_equal(t[n:], -t[:n])  # odd, bit for bit
    assert (np.abs(t) <= 1).all() and ((s >= 0) & (s <= 1)).all()
    assert (t[x >= 20] == 1).all() and (t[x <= -20] == -1).all()
    assert (s[x >= 40] == 1).all() and t[0] == 0 and s[0] == 0.5
    special = np.array([np.nan, np.inf, -np.inf], dtype)
    np.testing.assert_array_equal(_apply("tanh", special, isa), np.array([np.nan, 1, -1], dtype))
    np.testing.assert_array_equal(_apply("sigmoid", special, isa),
                                  np.array([np.nan, 1, 0], dtype))
