"""The reference's gradients against central finite differences, in float64.

For a random linear loss L = sum(dy * y) + sum(dh_n * h_n) + sum(dc_n * c_n) (terms dropped when the
incoming gradient is None), every gradient the backward returns must equal the finite-difference
derivative of L with respect to that argument: x, h0, c0, w_ih, w_hh, b_ih, b_hh and the LSTM
variants' w_hr, w_peep, ln_gates, ln_cell. Tiny sizes.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
from rnnkern_testing import (
    CELLS,
    GATES,
    LSTM_VARIANTS,
    make_case,
    make_lstm_variant_case,
    make_output_grads,
)

from rnnkern import reference
from rnnkern._api import LSTM_EXTRAS

STEP = 1e-6  # finite-difference step
RTOL, ATOL = 1e-6, 1e-8  # central differences in float64 are accurate to ~1e-9 here

# (lengths, bias, h0, which incoming gradients are given)
VARIANTS = [
    (None, True, True, ("dy", "dh_n", "dc_n")),
    ([4, 1, 2], False, False, ("dy",)),
    ([2, 4, 3], True, True, ("dh_n", "dc_n")),
    (None, False, True, ("dy", "dc_n")),
]
T, B, I, H = 4, 3, 2, 3
# forward argument -> the gradient field that belongs to it
GRAD_OF = {"x": "dx", "h0": "dh0", "c0": "dc0", "w_ih": "dw_ih", "w_hh": "dw_hh",
           "b_ih": "db_ih", "b_hh": "db_hh"}


def numeric_grad(f: Callable[[], float], a: np.ndarray) -> np.ndarray:
    """Central differences of f() with respect to every element of ``a`` (changed in place and
    restored)."""
    g = np.zeros_like(a)  # same shape as a
    flat, gflat = a.reshape(-1), g.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + STEP
        up = f()
        flat[k] = old - STEP
        down = f()
        flat[k] = old
        gflat[k] = (up - down) / (2 * STEP)
    return g


def rnn_preactivations(case: dict[str, Any], y: np.ndarray) -> np.ndarray:
    """(T, B, H) W_ih x_t + b_ih + W_hh h_{t-1} + b_hh of a vanilla RNN, rebuilt from its outputs
    (valid at steps within each length, where y[t-1] is h_{t-1})."""
    h0 = case["h0"] if case["h0"] is not None else np.zeros(y.shape[1:])
    h_prev = np.concatenate([h0[None], y[:-1]])  # (T, B, H)
    bias = 0 if case["b_ih"] is None else case["b_ih"] + case["b_hh"]
    return case["x"] @ case["w_ih"].T + h_prev @ case["w_hh"].T + bias


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"len{v[0]}-bias{v[1]}-h0{v[2]}-"
                         + "+".join(v[3]))
@pytest.mark.parametrize("cell_kw", CELLS, ids=lambda c: c[0] + "-" + "-".join(
    str(v) for v in c[1].values()))
def test_backward_matches_finite_differences(
    cell_kw: tuple[str, dict[str, Any]], variant: tuple[Any, ...]
) -> None:
    cell, kw = cell_kw
    lengths, bias, h0, given = variant
    case = make_case(cell, T, B, I, H, np.float64, bias=bias, h0=h0, lengths=lengths, seed=7)
    out_grads = make_output_grads(cell, T, B, H, np.float64, seed=8)  # dy, dh_n (, dc_n)
    if kw.get("nonlinearity") == "relu":  # finite differences are valid away from the kink
        out = reference.rnn_forward(**case, **kw)
        a = rnn_preactivations(case, out.y)
        n = case["lengths"] if lengths is not None else np.full(B, T)  # (B,)
        valid = np.arange(T)[:, None] < n  # (T, B)
        assert np.min(np.abs(a[valid])) > 1e3 * STEP, "a pre-activation sits at relu's kink"
    check_gradients(cell, case, kw, {k: (v if k in given else None)
                                     for k, v in out_grads.items()}, GRAD_OF)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"len{v[0]}-bias{v[1]}-h0{v[2]}-"
                         + "+".join(v[3]))
@pytest.mark.parametrize("lstm_variant", sorted(LSTM_VARIANTS))
def test_lstm_variant_backward_matches_finite_differences(lstm_variant: str,
                                                          variant: tuple[Any, ...]) -> None:
    """Projection, peepholes, layer norm and all three: every gradient, the variants' own
    (appended in LSTM_EXTRAS' order) included."""
    lengths, bias, h0, given = variant
    case = make_lstm_variant_case(lstm_variant, T, B, I, H, np.float64, P=2, bias=bias, h0=h0,
                                  lengths=lengths, seed=7)
    P = case["w_hh"].shape[1]
    out_grads = make_output_grads("lstm", T, B, H, np.float64, seed=8, P=P)
    extras = [n for n in LSTM_EXTRAS if n in case]
    grads = check_gradients("lstm", case, {}, {k: (v if k in given else None)
                                              for k, v in out_grads.items()},
                            {**GRAD_OF, **{n: "d" + n for n in extras}})
    assert len(grads) == 7 + len(extras)
    assert grads._fields[7:] == tuple("d" + n for n in extras)


def check_gradients(cell: str, case: dict[str, Any], kw: dict[str, Any],
                    grads_in: dict[str, Any], grad_of: dict[str, str]) -> Any:
    """Assert ``{cell}_backward``'s gradients equal central differences of the linear loss of
    ``grads_in`` (dy, dh_n, dc_n or None) for every forward argument in ``grad_of`` (argument ->
    gradient field); returns the backward's result."""
    forward = getattr(reference, f"{cell}_forward")
    backward = getattr(reference, f"{cell}_backward")
    # States passed as None are differentiated at zero: the gradient must be returned anyway.
    args = dict(case)
    rows, P = case["w_hh"].shape  # (G*H, P)
    for s, size in (("h0", P), ("c0", rows // GATES[cell])):
        if s in args and args[s] is None:
            args[s] = np.zeros((case["x"].shape[1], size))

    def loss() -> float:
        out = forward(**args, **kw)
        total = 0.0
        for name, field in (("dy", "y"), ("dh_n", "h_n"), ("dc_n", "c_n")):
            if grads_in.get(name) is not None:
                total += float(np.sum(grads_in[name] * getattr(out, field)))
        return total

    grads = backward(forward(**case, **kw).cache, **grads_in)
    for name, field in grad_of.items():
        if name not in args:
            continue
        analytic = getattr(grads, field)
        if args[name] is None:  # no bias: no bias gradient
            assert analytic is None, field
            continue
        numeric = numeric_grad(loss, args[name])
        np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL, err_msg=field)
    return grads


def test_relu_preactivation_rebuild_is_exact() -> None:
    """rnn_preactivations (used to keep relu away from its kink) reproduces the outputs."""
    case = make_case("rnn", T, B, I, H, np.float64, lengths=[4, 1, 2], seed=7)
    out = reference.rnn_forward(**case, nonlinearity="relu")
    a = rnn_preactivations(case, out.y)
    valid = np.arange(T)[:, None] < case["lengths"]  # (T, B)
    np.testing.assert_allclose(np.maximum(a, 0)[valid], out.y[valid], rtol=1e-14, atol=0)


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4)])
def test_softmax_is_the_gradient_of_logsumexp(shape: tuple[int, ...]) -> None:
    z = np.random.default_rng(0).normal(0, 2, size=shape)
    numeric = numeric_grad(lambda: float(np.sum(np.log(np.sum(np.exp(z), axis=-1)))), z)
    np.testing.assert_allclose(reference.softmax(z), numeric, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(reference.softmax(z).sum(axis=-1), 1.0, rtol=1e-15)


@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_cross_entropy_gradient_matches_finite_differences(ignore_index: int) -> None:
    rng = np.random.default_rng(1)
    N, C = 6, 4
    logits = rng.normal(0, 2, size=(N, C))  # (N, C)
    targets = np.array([0, 3, ignore_index, 1, 2, ignore_index])  # (N,)
    loss, dlogits = reference.softmax_cross_entropy(logits, targets, ignore_index=ignore_index)
    numeric = numeric_grad(
        lambda: reference.softmax_cross_entropy(logits, targets, ignore_index=ignore_index).loss,
        logits,
    )
    np.testing.assert_allclose(dlogits, numeric, rtol=RTOL, atol=ATOL)
    counted = targets != ignore_index
    z = logits[counted]
    direct = np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(z)), targets[counted]]
    np.testing.assert_allclose(loss, direct.mean(), rtol=1e-14)
