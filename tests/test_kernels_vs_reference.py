"""rnnkern's functions against rnnkern.reference computed in float64, over a sweep of shapes.

The kernel runs in float32 or float64 on the inputs; the reference runs in float64 on the very same
(float32-rounded) values; results and every gradient must agree within assert_close's policy
(docs/tolerances.md). Padded steps must give exact zeros.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from rnnkern_testing import (
    CELLS,
    as_dtype,
    assert_close,
    make_case,
    make_output_grads,
    rnn_acc_len,
)

import rnnkern
from rnnkern import reference

# (T, B, I, H): sizes of 1, odd and prime sizes, H below/at/above multiples of 8 and 16, I != H.
SHAPES = [
    (1, 1, 1, 1),
    (1, 3, 5, 7),
    (7, 1, 3, 8),
    (5, 2, 13, 16),
    (3, 4, 17, 33),
    (13, 3, 7, 17),
    (4, 5, 33, 32),
    (2, 7, 8, 13),
]
# Which optional inputs are given; together they cover each option with and without the others.
OPTIONS = [
    {"bias": True, "h0": True, "lengths": None, "dy": True, "dh_n": True, "dc_n": True},
    {"bias": False, "h0": False, "lengths": "random", "dy": True, "dh_n": False, "dc_n": False},
    {"bias": True, "h0": False, "lengths": "random", "dy": False, "dh_n": True, "dc_n": False},
    {"bias": False, "h0": True, "lengths": "random", "dy": True, "dh_n": False, "dc_n": True},
]
DTYPES = [np.float32, np.float64]


def _id(value: Any) -> str:
    if isinstance(value, tuple) and isinstance(value[0], str):
        return value[0] + "-" + "-".join(str(v) for v in value[1].values())
    if isinstance(value, dict):
        return "-".join(k if v is True else f"{k}={v}" for k, v in value.items() if v)
    return str(value)


def run(module: Any, cell: str, case: dict[str, Any], grads: dict[str, Any],
        kw: dict[str, Any]) -> tuple[Any, Any]:
    """Forward then backward of ``module``'s ``cell``; returns (outputs, gradients)."""
    out = getattr(module, f"{cell}_forward")(**case, **kw)
    return out, getattr(module, f"{cell}_backward")(out.cache, **grads)


def check_vs_reference(cell: str, case: dict[str, Any], grads: dict[str, Any],
                       kw: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """The kernels' forward and backward against the reference run in float64 on the same
    values, every field compared (see compare); returns (outputs, gradients) of the kernels,
    then of the reference."""
    T, B, I = case["x"].shape
    H = case["w_hh"].shape[1]
    dtype = case["x"].dtype
    out, g = run(rnnkern, cell, case, grads, kw)
    ref_out, ref_g = run(reference, cell, as_dtype(case, np.float64),
                         as_dtype(grads, np.float64), kw)
    acc_len = rnn_acc_len(cell, T, B, I, H)
    compare(out, ref_out, dtype, acc_len)
    compare(g, ref_g, dtype, acc_len)
    return out, g, ref_out, ref_g


# Outputs built from gates in [-1, 1] and O(1) cell states: their rounding errors scale with 1
# even where a value is small by cancellation (c = f*c + i*g), so the floor's scale is >= 1.
STATES = ("y", "h_n", "c_n")


def compare(actual: Any, expected: Any, dtype: Any, acc_len: int) -> None:
    """Every field of two result tuples (cache excepted) with assert_close; None must match."""
    for name in actual._fields:
        if name == "cache":
            continue
        a, e = getattr(actual, name), getattr(expected, name)
        if e is None:
            assert a is None, f"{name}: expected None"
            continue
        scale = max(1.0, float(np.max(np.abs(e[np.isfinite(e)]), initial=0))) if name in STATES \
            else None
        assert_close(a, e, dtype=dtype, acc_len=acc_len, name=name, scale=scale)


@pytest.mark.parametrize("options", OPTIONS, ids=_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
@pytest.mark.parametrize("cell_kw", CELLS, ids=_id)
def test_cell_matches_reference(
    cell_kw: tuple[str, dict[str, Any]], shape: tuple[int, int, int, int], dtype: Any,
    options: dict[str, Any],
) -> None:
    cell, kw = cell_kw
    T, B, I, H = shape
    seed = SHAPES.index(shape) * 10 + OPTIONS.index(options)
    case = make_case(cell, T, B, I, H, dtype, bias=options["bias"], h0=options["h0"],
                     lengths=options["lengths"], seed=seed)
    grads: dict[str, Any] = make_output_grads(cell, T, B, H, dtype, seed=seed + 1)
    for name in grads:
        if not options[name]:
            grads[name] = None

    out, g, ref_out, _ = check_vs_reference(cell, case, grads, kw)

    lengths = case["lengths"]
    if lengths is not None:  # padded steps: zero outputs and input gradients, exactly
        padded = np.arange(T)[:, None] >= lengths[None, :]  # (T, B)
        assert np.all(out.y[padded] == 0)
        assert np.all(g.dx[padded] == 0)

    inference = getattr(rnnkern, f"{cell}_forward")(**case, **kw, training=False)
    assert inference.cache is None
    compare(inference, ref_out, dtype, rnn_acc_len(cell, T, B, I, H))


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("cell_kw", CELLS, ids=_id)
def test_lengths_equal_to_separate_runs(cell_kw: tuple[str, dict[str, Any]], dtype: Any) -> None:
    """Each sequence of a padded batch gives what it gives alone, cut to its length."""
    cell, kw = cell_kw
    T, B, I, H = 6, 4, 5, 7
    case = make_case(cell, T, B, I, H, dtype, lengths=[3, 6, 1, 4], seed=3)
    grads = make_output_grads(cell, T, B, H, dtype, seed=4)
    out, g = run(rnnkern, cell, case, grads, kw)
    acc_len = rnn_acc_len(cell, T, B, I, H)
    for b, n in enumerate(case["lengths"]):
        alone = {k: v for k, v in case.items() if k != "lengths"}
        alone["x"] = case["x"][:n, b:b + 1]
        for s in ("h0", "c0"):
            if s in alone:
                alone[s] = case[s][b:b + 1]
        alone_grads = {"dy": grads["dy"][:n, b:b + 1]}
        alone_grads.update({k: v[b:b + 1] for k, v in grads.items() if k != "dy"})
        ref_out, ref_g = run(reference, cell, as_dtype(alone, np.float64),
                             as_dtype(alone_grads, np.float64), kw)
        assert_close(out.y[:n, b:b + 1], ref_out.y, dtype=dtype, acc_len=acc_len, name="y")
        assert_close(out.h_n[b:b + 1], ref_out.h_n, dtype=dtype, acc_len=acc_len, name="h_n")
        assert_close(g.dx[:n, b:b + 1], ref_g.dx, dtype=dtype, acc_len=acc_len, name="dx")
        assert_close(g.dh0[b:b + 1], ref_g.dh0, dtype=dtype, acc_len=acc_len, name="dh0")
        if cell == "lstm":
            assert_close(out.c_n[b:b + 1], ref_out.c_n, dtype=dtype, acc_len=acc_len, name="c_n")
            assert_close(g.dc0[b:b + 1], ref_g.dc0, dtype=dtype, acc_len=acc_len, name="dc0")


@pytest.mark.parametrize("shape", [(3, 2, 0, 4), (3, 2, 4, 0)], ids=["I0", "H0"])
@pytest.mark.parametrize("cell_kw", CELLS, ids=_id)
def test_zero_sizes_match_reference(cell_kw: tuple[str, dict[str, Any]],
                                    shape: tuple[int, int, int, int]) -> None:
    """No input features or no hidden units: a valid, if useless, cell."""
    cell, kw = cell_kw
    T, B, I, H = shape
    case = make_case(cell, T, B, I, H, np.float64, lengths=[3, 1])
    grads = make_output_grads(cell, T, B, H, np.float64)
    check_vs_reference(cell, case, grads, kw)


SOFTMAX_SHAPES = [(1,), (7,), (5, 13), (3, 4, 33), (2, 1), (4, 0)]


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=_id)
def test_softmax_matches_reference(shape: tuple[int, ...], dtype: Any) -> None:
    z = np.random.default_rng(len(shape)).normal(0, 3, size=shape).astype(dtype)
    expected = reference.softmax(z.astype(np.float64))
    assert_close(rnnkern.softmax(z), expected, dtype=dtype, acc_len=shape[-1], name="softmax")


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_softmax_large_logits(dtype: Any) -> None:
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype)  # (3, 3)
    p = rnnkern.softmax(z)
    assert np.all(np.isfinite(p))
    assert_close(p, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0]], dtype=dtype, acc_len=3)


# (N, C, ignore_index, how many rows are ignored)
CE_CASES = [(1, 1, -100, 0), (7, 4, -100, 2), (33, 17, -100, 5), (16, 100, 3, 4), (5, 3, -1, 5),
            (0, 4, -100, 0)]


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("case", CE_CASES, ids=_id)
def test_cross_entropy_matches_reference(case: tuple[int, int, int, int], dtype: Any) -> None:
    N, C, ignore_index, n_ignored = case
    rng = np.random.default_rng(N + C)
    logits = rng.normal(0, 3, size=(N, C)).astype(dtype)  # (N, C)
    targets = rng.integers(0, C, size=N)  # (N,)
    targets[rng.choice(N, size=n_ignored, replace=False)] = ignore_index
    loss, dlogits = rnnkern.softmax_cross_entropy(logits, targets, ignore_index=ignore_index)
    ref = reference.softmax_cross_entropy(logits.astype(np.float64), targets,
                                          ignore_index=ignore_index)
    acc_len = max(N, C)
    assert isinstance(loss, float)
    assert_close(loss, ref.loss, dtype=dtype, acc_len=acc_len, name="loss")
    assert_close(dlogits, ref.dlogits, dtype=dtype, acc_len=acc_len, name="dlogits")
    ignored = targets == ignore_index
    assert np.all(dlogits[ignored] == 0)
    if n_ignored == N:
        assert loss == 0.0


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_cross_entropy_large_logits(dtype: Any) -> None:
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4], [1e4, 1e4, -1e4]], dtype)  # (3, 3)
    targets = np.array([1, 1, 2])  # losses 2e4, 0, 2e4 + log 2
    loss, dlogits = rnnkern.softmax_cross_entropy(logits, targets)
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
    assert_close(loss, (4e4 + np.log(2)) / 3, dtype=dtype, acc_len=3, name="loss")
    expected = np.array([[1, -1, 0], [0, 0, 0], [0.5, 0.5, -1]]) / 3
    assert_close(dlogits, expected, dtype=dtype, acc_len=3, name="dlogits")
