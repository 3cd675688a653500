"""Property-based tests (hypothesis): random shapes, dtypes, memory layouts, lengths and optional
arguments, against the float64 reference and against the kernels' own contiguous results.

Properties of every drawn recurrent problem:
- outputs and gradients within the tolerance policy of the reference (docs/tolerances.md);
- any memory layout of any argument (non-contiguous, Fortran order, negative strides,
  misaligned, byte-swapped, read-only; each argument its own) gives the contiguous result's bits;
- padded steps give exact zeros, h_n (c_n) is the state after each sequence's last valid step
  (h_n[b] == y[lengths[b] - 1, b] bit for bit), and inference gives training's outputs bit for bit.
Softmax and cross-entropy: the reference, layouts, rows summing to 1, ignored rows.

Bounded for CI: derandomized (the same examples every run), no example database, 30-50
examples per property.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, cast

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rnnkern_testing import assert_close, make_case, make_output_grads
from test_errors import LAYOUTS, assert_same
from test_kernels_vs_reference import check_vs_reference, run
from test_reliability import CELLS

import rnnkern
from rnnkern import reference

# When an example fails, hypothesis's pytest plugin imports hypothesis.extra._patching (and so
# libcst) to suggest a patch; libcst's import warns (mypy_extensions.TypedDict is deprecated),
# which the suite's filterwarnings = error turns into a pytest INTERNALERROR hiding the failure.
# Imported here first with that warning ignored, the plugin finds it loaded.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:  # libcst not installed: the plugin skips the patch
        pass

DTYPES = [np.float32, np.float64]
LAYOUT_NAMES = ["contiguous", *LAYOUTS]
LENGTH_DTYPES = [np.int8, np.uint8, np.int16, np.int32, np.uint32, np.int64, np.uint64]


def bounded(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def layout(name: str, a: np.ndarray) -> np.ndarray:
    """``a`` in the named memory layout (same values; checked by the caller where it matters)."""
    if name == "contiguous":
        return a
    change = cast(Callable[[np.ndarray], np.ndarray], LAYOUTS[name])
    return change(a)


@st.composite
def recurrent_problems(draw: st.DrawFn) -> dict[str, Any]:
    """A cell, its forward arguments, incoming gradients and a layout for every array."""
    cell, kw = draw(st.sampled_from(CELLS))
    T, B = draw(st.integers(1, 6)), draw(st.integers(0, 5))
    I, H = draw(st.integers(0, 9)), draw(st.integers(1, 20))
    dtype = draw(st.sampled_from(DTYPES))
    given_lengths = B > 0 and draw(st.booleans())
    case = make_case(cell, T, B, I, H, dtype, bias=draw(st.booleans()), h0=draw(st.booleans()),
                     lengths="random" if given_lengths else None,
                     seed=draw(st.integers(0, 2**16)))
    if given_lengths:
        case["lengths"] = case["lengths"].astype(draw(st.sampled_from(LENGTH_DTYPES)))
    grads: dict[str, Any] = make_output_grads(cell, T, B, H, dtype,
                                              seed=draw(st.integers(0, 2**16)))
    for name in grads:
        if draw(st.booleans()):
            grads[name] = None
    arrays = [k for k, v in {**case, **grads}.items() if isinstance(v, np.ndarray)]
    layouts = {k: draw(st.sampled_from(LAYOUT_NAMES), label=f"layout of {k}") for k in arrays}
    return {"cell": cell, "kw": kw, "case": case, "grads": grads, "layouts": layouts}


def in_layouts(args: dict[str, Any], layouts: dict[str, str]) -> dict[str, Any]:
    """A copy of ``args`` with each array in its own layout ``layouts[name]``."""
    out = {k: layout(layouts[k], v) if isinstance(v, np.ndarray) else v for k, v in args.items()}
    for k, v in args.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(out[k], v)
    return out


@bounded(50)
@given(recurrent_problems())
def test_recurrent_cells(problem: dict[str, Any]) -> None:
    cell, kw, case, grads = problem["cell"], problem["kw"], problem["case"], problem["grads"]
    T, B, _ = case["x"].shape
    out, g, _, _ = check_vs_reference(cell, case, grads, kw)

    odd_out, odd_g = run(rnnkern, cell, in_layouts(case, problem["layouts"]),
                         in_layouts(grads, problem["layouts"]), kw)
    assert_same(odd_out, out)
    assert_same(odd_g, g)

    inference = getattr(rnnkern, f"{cell}_forward")(**case, **kw, training=False)
    assert inference.cache is None
    assert_same(inference, out)

    lengths = np.full(B, T) if case["lengths"] is None else case["lengths"].astype(np.int64)
    padded = np.arange(T)[:, None] >= lengths[None, :]  # (T, B)
    assert np.all(out.y[padded] == 0) and np.all(g.dx[padded] == 0)
    last = out.y[lengths - 1, np.arange(B)]  # (B, H): each sequence's last valid output
    np.testing.assert_array_equal(out.h_n, last, strict=True)


@st.composite
def softmax_inputs(draw: st.DrawFn) -> tuple[np.ndarray, str]:
    """z (..., C) with 1 to 3 axes (sizes 0..7, C >= 1), of scale 1, 30 or 1000, and a layout."""
    shape = tuple(draw(st.lists(st.integers(0, 7), min_size=0, max_size=2)))
    shape += (draw(st.integers(1, 9)),)
    scale = draw(st.sampled_from([1.0, 30.0, 1000.0]))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    z = (rng.normal(size=shape) * scale).astype(dtype)  # (..., C)
    return z, draw(st.sampled_from(LAYOUT_NAMES))


@bounded(40)
@given(softmax_inputs())
def test_softmax(problem: tuple[np.ndarray, str]) -> None:
    z, name = problem
    C = z.shape[-1]
    p = rnnkern.softmax(z)
    assert_close(p, reference.softmax(z.astype(np.float64)), dtype=z.dtype, acc_len=C,
                 name="softmax")
    assert_close(p.sum(axis=-1), np.ones(z.shape[:-1]), dtype=z.dtype, acc_len=C, name="sum",
                 scale=1.0)
    np.testing.assert_array_equal(rnnkern.softmax(layout(name, z)), p, strict=True)


@st.composite
def loss_inputs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int, str]:
    """logits (N, C), integer targets (N,) some equal to ignore_index, ignore_index, a layout."""
    N, C = draw(st.integers(0, 8)), draw(st.integers(1, 9))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    logits = (rng.normal(size=(N, C)) * draw(st.sampled_from([1.0, 30.0, 1e4]))).astype(dtype)
    ignore_index = draw(st.sampled_from([-100, -1, C + 3]))
    targets = rng.integers(0, C, size=N)  # (N,)
    targets[rng.random(N) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = ignore_index
    int_dtype = draw(st.sampled_from([np.int8, np.int16, np.int32, np.int64]))
    return logits, targets.astype(int_dtype), ignore_index, draw(st.sampled_from(LAYOUT_NAMES))


@bounded(40)
@given(loss_inputs())
def test_softmax_cross_entropy(problem: tuple[np.ndarray, np.ndarray, int, str]) -> None:
    logits, targets, ignore_index, name = problem
    N, C = logits.shape
    loss, dlogits = rnnkern.softmax_cross_entropy(logits, targets, ignore_index=ignore_index)
    ref = reference.softmax_cross_entropy(logits.astype(np.float64), targets,
                                          ignore_index=ignore_index)
    acc_len = max(N, C)
    assert isinstance(loss, float)
    # the loss is a difference of terms of the logits' size
    scale = max(1.0, float(np.max(np.abs(logits), initial=0.0)))
    assert_close(loss, ref.loss, dtype=logits.dtype, acc_len=acc_len, name="loss", scale=scale)
    assert_close(dlogits, ref.dlogits, dtype=logits.dtype, acc_len=acc_len, name="dlogits",
                 scale=1.0 / max(1, int(np.sum(targets != ignore_index))))
    ignored = targets == ignore_index
    assert np.all(dlogits[ignored] == 0)
    assert_close(dlogits.sum(axis=1), np.zeros(N), dtype=logits.dtype, acc_len=acc_len,
                 name="row sums", scale=1.0)
    odd = in_layouts({"logits": logits, "targets": targets}, {"logits": name, "targets": name})
    again = rnnkern.softmax_cross_entropy(odd["logits"], odd["targets"],
                                          ignore_index=ignore_index)
    assert again.loss == loss
    np.testing.assert_array_equal(again.dlogits, dlogits, strict=True)


def test_layouts_cover_the_documented_kinds() -> None:
    """The property tests draw from every layout the API names (docs/api.md)."""
    for kind in ("noncontiguous", "fortran", "negative-strides", "misaligned"):
        assert kind in LAYOUT_NAMES
    a = np.arange(12.0).reshape(3, 4)  # (3, 4)
    for name in LAYOUT_NAMES:
        np.testing.assert_array_equal(layout(name, a), a)
    assert not layout("noncontiguous", a).flags.c_contiguous
    assert layout("fortran", a).flags.f_contiguous and not layout("fortran", a).flags.c_contiguous
    assert layout("negative-strides", a).strides[0] < 0
    assert not layout("misaligned", a).flags.aligned


@bounded(20)
@given(cell=st.sampled_from(["rnn_tanh", "lstm", "gru"]), T=st.integers(1, 40),
       B=st.integers(1, 24), I=st.integers(1, 20), H=st.integers(1, 40),
       seed=st.integers(0, 2**16))
def test_drop_in_cell_training_loop_matches_torch(cell: str, T: int, B: int, I: int, H: int,
                                                  seed: int) -> None:
    """rnnkern.torch's cells in a training loop (T steps fed back, a loss over every step's
    output, one backward) against torch's cells, float64, on the default threads: dx and every
    weight gradient within 1e-10 of the largest. Random sizes put a pass's kept rows (T * B, up
    to 960) in one block of 256 or across several with a short last one (the race of
    docs/reliability.md's problem 7 has its own test in test_threads.py; this one rarely hit
    it)."""
    import torch
    from test_torch_cells import loop, pair

    ours, theirs = pair(cell, I, H, seed=seed)
    xs = torch.randn(T, B, I, dtype=torch.float64)
    got = []
    for module in (ours, theirs):
        x = xs.clone().requires_grad_()
        loss, _ = loop(module, x, None)
        loss.backward()
        got.append([x.grad, *(p.grad for p in module.parameters())])
    for a, b in zip(*got):
        scale = max(float(b.abs().max()), 1e-300)
        assert float((a - b).abs().max()) <= 1e-10 * scale
