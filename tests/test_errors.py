"""Argument checking and edge cases of every public function, for rnnkern and rnnkern.reference.

Each bad argument must raise the documented exception (TypeError or ValueError) with a message that
starts with the parameter's name and a colon (and says "dtype" for a dtype problem). Odd memory
layouts must give the result of a contiguous copy, B = 0 empty results, and nothing may modify its
inputs or its cache.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from rnnkern_testing import GATES, make_case, make_output_grads

import rnnkern
from rnnkern import reference

MODULES = [pytest.param(rnnkern, id="rnnkern"), pytest.param(reference, id="reference")]
CELLS = ["rnn", "lstm", "gru"]
T, B, I, H = 5, 3, 4, 6  # H = 6: 4H = 24 and 3H = 18 rows differ
BAD = 7  # a prime size that fits no dimension
LENGTHS = [5, 2, 3]

Overrides = Callable[[dict[str, Any]], dict[str, Any]]


def base_case(cell: str, dtype: Any = np.float32) -> dict[str, Any]:
    """Valid forward arguments of ``cell`` (T, B, I, H as above), with lengths."""
    return make_case(cell, T, B, I, H, dtype, lengths=LENGTHS, seed=5)


def forward(module: Any, cell: str) -> Callable[..., Any]:
    return getattr(module, f"{cell}_forward")  # type: ignore[no-any-return]


def backward(module: Any, cell: str) -> Callable[..., Any]:
    return getattr(module, f"{cell}_backward")  # type: ignore[no-any-return]


def raises(exc: type[Exception], name: str, dtype: bool = False) -> Any:
    """pytest.raises for a message starting with "name:" (and mentioning "dtype" if asked)."""
    pattern = "^" + re.escape(name) + ":" + (".*dtype" if dtype else "")
    return pytest.raises(exc, match=pattern)


def f32(*shape: int) -> np.ndarray:
    return np.zeros(shape, np.float32)


# ----------------------------------------------------------------------------- forward errors


def forward_errors(cell: str) -> Iterator[tuple[str, Overrides, type[Exception], str, bool]]:
    """(label, overrides of the base case, exception, argument named, is a dtype problem)."""
    G = GATES[cell]
    yield "x-list", lambda c: {"x": c["x"].tolist()}, TypeError, "x", False
    yield "x-None", lambda c: {"x": None}, TypeError, "x", False
    for dt in (np.int64, np.int32, np.complex64, np.bool_, np.float16):
        yield f"x-{np.dtype(dt).name}", lambda c, dt=dt: {"x": c["x"].astype(dt)}, \
            TypeError, "x", True
    yield "x-2d", lambda c: {"x": c["x"][0], "lengths": None}, ValueError, "x", False
    yield "x-4d", lambda c: {"x": c["x"][None]}, ValueError, "x", False
    yield "x-T0", lambda c: {"x": c["x"][:0], "lengths": None}, ValueError, "x", False
    yield "x-T0-lengths", lambda c: {"x": c["x"][:0]}, ValueError, "x", False
    yield "x-input-size", lambda c: {"x": f32(T, B, BAD)}, ValueError, "w_ih", False
    yield "x-batch", lambda c: {"x": f32(T, BAD, I)}, ValueError, "h0", False

    states = ("h0", "c0") if cell == "lstm" else ("h0",)
    for s in states:
        yield f"{s}-batch", lambda c, s=s: {s: f32(BAD, H)}, ValueError, s, False
        yield f"{s}-hidden", lambda c, s=s: {s: f32(B, BAD)}, ValueError, s, False
        yield f"{s}-1d", lambda c, s=s: {s: f32(H)}, ValueError, s, False
        yield f"{s}-3d", lambda c, s=s: {s: f32(1, B, H)}, ValueError, s, False
        yield f"{s}-float64", lambda c, s=s: {s: c[s].astype(np.float64)}, TypeError, s, True
        yield f"{s}-int", lambda c, s=s: {s: c[s].astype(np.int32)}, TypeError, s, True
        yield f"{s}-complex", lambda c, s=s: {s: c[s].astype(np.complex64)}, TypeError, s, True
        yield f"{s}-list", lambda c, s=s: {s: c[s].tolist()}, TypeError, s, False

    for w, cols in (("w_ih", I), ("w_hh", H)):
        yield f"{w}-rows", lambda c, w=w, cols=cols: {w: f32(BAD, cols)}, ValueError, w, False
        yield f"{w}-1d", lambda c, w=w: {w: f32(G * H)}, ValueError, w, False
        yield f"{w}-3d", lambda c, w=w: {w: c[w][None]}, ValueError, w, False
        yield f"{w}-None", lambda c, w=w: {w: None}, TypeError, w, False
        yield f"{w}-list", lambda c, w=w: {w: c[w].tolist()}, TypeError, w, False
        yield f"{w}-float64", lambda c, w=w: {w: c[w].astype(np.float64)}, TypeError, w, True
        yield f"{w}-int", lambda c, w=w: {w: c[w].astype(np.int64)}, TypeError, w, True
        yield f"{w}-complex", lambda c, w=w: {w: c[w].astype(np.complex128)}, TypeError, w, True
    yield "w_ih-input", lambda c: {"w_ih": f32(G * H, BAD)}, ValueError, "w_ih", False
    # w_hh fixes H: a wrong second dimension is a gate-rows mismatch of w_hh, or else of w_ih
    yield "w_hh-hidden", lambda c: {"w_hh": f32(G * H, BAD)}, ValueError, "w_hh", False
    yield "w_hh-hidden-square", lambda c: {"w_hh": f32(G * BAD, BAD)}, ValueError, "w_ih", False

    for b in ("b_ih", "b_hh"):
        yield f"{b}-length", lambda c, b=b: {b: f32(BAD)}, ValueError, b, False
        yield f"{b}-2d", lambda c, b=b: {b: c[b][None]}, ValueError, b, False
        yield f"{b}-float64", lambda c, b=b: {b: c[b].astype(np.float64)}, TypeError, b, True
        yield f"{b}-int", lambda c, b=b: {b: c[b].astype(np.int16)}, TypeError, b, True
        yield f"{b}-list", lambda c, b=b: {b: c[b].tolist()}, TypeError, b, False
        yield f"{b}-alone", lambda c, b=b: {b: None}, ValueError, b, False

    yield "mixed-x-float64", lambda c: {"x": c["x"].astype(np.float64)}, TypeError, "w_hh", True

    for label, value in (("zero", [0, 2, 3]), ("too-long", [T + 1, 2, 3]),
                         ("negative", [-1, 2, 3]), ("huge", [2**40, 1, 1])):
        yield f"lengths-{label}", lambda c, v=value: {"lengths": np.array(v)}, \
            ValueError, "lengths", False
    yield "lengths-uint64-huge", lambda c: {"lengths": np.array([2**64 - 1, 1, 1], np.uint64)}, \
        ValueError, "lengths", False
    yield "lengths-shape", lambda c: {"lengths": np.array(LENGTHS + [1])}, ValueError, \
        "lengths", False
    yield "lengths-2d", lambda c: {"lengths": np.array(LENGTHS)[:, None]}, ValueError, \
        "lengths", False
    yield "lengths-float", lambda c: {"lengths": np.array(LENGTHS, np.float64)}, TypeError, \
        "lengths", True
    yield "lengths-bool", lambda c: {"lengths": np.ones(B, bool)}, TypeError, "lengths", True
    yield "lengths-list", lambda c: {"lengths": LENGTHS}, TypeError, "lengths", False
    yield "training-str", lambda c: {"training": "yes"}, TypeError, "training", False

    for other, G2 in GATES.items():  # another cell's weights
        if G2 != G:
            yield f"weights-of-{other}", lambda c, G2=G2: {
                "w_ih": f32(G2 * H, I), "w_hh": f32(G2 * H, H), "b_ih": None, "b_hh": None,
            }, ValueError, "w_hh", False
    if cell == "rnn":
        yield "nonlinearity-unknown", lambda c: {"nonlinearity": "gelu"}, ValueError, \
            "nonlinearity", False
        yield "nonlinearity-int", lambda c: {"nonlinearity": 1}, TypeError, "nonlinearity", False
        yield "nonlinearity-None", lambda c: {"nonlinearity": None}, TypeError, \
            "nonlinearity", False
    if cell == "gru":
        yield "linear_before_reset-str", lambda c: {"linear_before_reset": "no"}, TypeError, \
            "linear_before_reset", False


FORWARD_ERRORS = [
    pytest.param(cell, overrides, exc, name, is_dtype, id=f"{cell}-{label}")
    for cell in CELLS for label, overrides, exc, name, is_dtype in forward_errors(cell)
]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize(("cell", "overrides", "exc", "name", "is_dtype"), FORWARD_ERRORS)
def test_forward_rejects(module: Any, cell: str, overrides: Overrides, exc: type[Exception],
                         name: str, is_dtype: bool) -> None:
    args = base_case(cell)
    args.update(overrides(args))
    with raises(exc, name, is_dtype):
        forward(module, cell)(**args)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("cell", CELLS)
def test_wrong_cell_weights_message_says_what_is_expected(module: Any, cell: str) -> None:
    for G2 in GATES.values():
        if G2 == GATES[cell]:
            continue
        args = base_case(cell)
        args.update(w_ih=f32(G2 * H, I), w_hh=f32(G2 * H, H), b_ih=None, b_hh=None)
        with pytest.raises(ValueError) as info:
            forward(module, cell)(**args)
        message = str(info.value)
        assert cell in message and f"({GATES[cell] * H}, {H})" in message, message
        assert f"({G2 * H}, {H})" in message, message


@pytest.mark.parametrize("module", MODULES)
def test_shape_message_format(module: Any) -> None:
    args = base_case("rnn")
    args["h0"] = f32(B, H - 1)
    expected = f"h0: expected shape (B, H) = ({B}, {H}), got ({B}, {H - 1})"
    with pytest.raises(ValueError, match="^" + re.escape(expected) + "$"):
        module.rnn_forward(**args)
    args = base_case("rnn")
    args["lengths"] = np.array([0, T, 1])
    expected = f"lengths: every value must be in 1..T = 1..{T}, got min 0, max {T}"
    with pytest.raises(ValueError, match="^" + re.escape(expected) + "$"):
        module.rnn_forward(**args)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("cell", CELLS)
def test_impossible_sizes_raise_before_allocating(module: Any, cell: str) -> None:
    """Sizes whose buffers cannot exist: OverflowError or MemoryError, not an attempt."""
    G = GATES[cell]
    big_h = 2**20
    zero = np.zeros((), np.float32)
    args = {
        "x": np.broadcast_to(zero, (2**20, 2**20, 1)),  # 2**40 elements, no memory
        "h0": None,
        "w_ih": np.broadcast_to(zero, (G * big_h, 1)),
        "w_hh": np.broadcast_to(zero, (G * big_h, big_h)),
        "b_ih": None,
        "b_hh": None,
    }
    if cell == "lstm":
        args["c0"] = None
    with pytest.raises((OverflowError, MemoryError)):
        forward(module, cell)(**args)


# ----------------------------------------------------------------------------- backward errors


def run_forward(module: Any, cell: str, dtype: Any = np.float32) -> tuple[Any, dict[str, Any]]:
    """(forward output, valid incoming gradients) for the base case."""
    out = forward(module, cell)(**base_case(cell, dtype))
    return out, make_output_grads(cell, T, B, H, dtype, seed=6)


def backward_errors(cell: str) -> Iterator[tuple[str, Overrides, type[Exception], str, bool]]:
    """(label, overrides of backward's gradients, exception, argument named, dtype problem)."""
    finals = ("dh_n", "dc_n") if cell == "lstm" else ("dh_n",)
    yield "dy-hidden", lambda g: {"dy": f32(T, B, BAD)}, ValueError, "dy", False
    yield "dy-time", lambda g: {"dy": f32(T + 1, B, H)}, ValueError, "dy", False
    yield "dy-batch", lambda g: {"dy": f32(T, BAD, H)}, ValueError, "dy", False
    yield "dy-2d", lambda g: {"dy": f32(B, H)}, ValueError, "dy", False
    yield "dy-float64", lambda g: {"dy": g["dy"].astype(np.float64)}, TypeError, "dy", True
    yield "dy-int", lambda g: {"dy": g["dy"].astype(np.int32)}, TypeError, "dy", True
    yield "dy-complex", lambda g: {"dy": g["dy"].astype(np.complex64)}, TypeError, "dy", True
    yield "dy-list", lambda g: {"dy": g["dy"].tolist()}, TypeError, "dy", False
    for s in finals:
        yield f"{s}-batch", lambda g, s=s: {s: f32(BAD, H)}, ValueError, s, False
        yield f"{s}-hidden", lambda g, s=s: {s: f32(B, BAD)}, ValueError, s, False
        yield f"{s}-1d", lambda g, s=s: {s: f32(H)}, ValueError, s, False
        yield f"{s}-float64", lambda g, s=s: {s: g[s].astype(np.float64)}, TypeError, s, True
        yield f"{s}-int", lambda g, s=s: {s: g[s].astype(np.int64)}, TypeError, s, True
        yield f"{s}-list", lambda g, s=s: {s: g[s].tolist()}, TypeError, s, False


BACKWARD_ERRORS = [
    pytest.param(cell, overrides, exc, name, is_dtype, id=f"{cell}-{label}")
    for cell in CELLS for label, overrides, exc, name, is_dtype in backward_errors(cell)
]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize(("cell", "overrides", "exc", "name", "is_dtype"), BACKWARD_ERRORS)
def test_backward_rejects(module: Any, cell: str, overrides: Overrides, exc: type[Exception],
                          name: str, is_dtype: bool) -> None:
    out, grads = run_forward(module, cell)
    grads.update(overrides(grads))
    with raises(exc, name, is_dtype):
        backward(module, cell)(out.cache, **grads)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("cell", CELLS)
def test_backward_rejects_bad_caches(module: Any, cell: str) -> None:
    _, grads = run_forward(module, cell)
    with raises(ValueError, "cache"):
        backward(module, cell)(None, **grads)
    inference = forward(module, cell)(**base_case(cell), training=False)
    assert inference.cache is None
    with raises(ValueError, "cache"):
        backward(module, cell)(inference.cache, **grads)
    for other in CELLS:
        if other != cell:
            other_out = forward(module, other)(**base_case(other))
            with raises(TypeError, "cache"):
                backward(module, cell)(other_out.cache, **grads)
    for junk in ("cache", {"y": 1}, object(), np.zeros(3), 3):
        with raises(TypeError, "cache"):
            backward(module, cell)(junk, **grads)


@pytest.mark.parametrize("cell", CELLS)
def test_cache_of_the_other_backend_is_rejected(cell: str) -> None:
    if forward(rnnkern, cell) is forward(reference, cell):
        pytest.skip("rnnkern still runs the reference")
    _, grads = run_forward(rnnkern, cell)
    for maker, user in ((rnnkern, reference), (reference, rnnkern)):
        out = forward(maker, cell)(**base_case(cell))
        with raises(TypeError, "cache"):
            backward(user, cell)(out.cache, **grads)


# ----------------------------------------------------------------------------- softmax and loss


SOFTMAX_ERRORS = [
    pytest.param(lambda: [1.0, 2.0], TypeError, "z", False, id="list"),
    pytest.param(lambda: None, TypeError, "z", False, id="None"),
    pytest.param(lambda: np.arange(3), TypeError, "z", True, id="int"),
    pytest.param(lambda: np.ones(3, np.complex128), TypeError, "z", True, id="complex"),
    pytest.param(lambda: np.ones(3, np.float16), TypeError, "z", True, id="float16"),
    pytest.param(lambda: np.float64(1.0), TypeError, "z", False, id="numpy-scalar"),
    pytest.param(lambda: np.array(1.0), ValueError, "z", False, id="0d"),
]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize(("make", "exc", "name", "is_dtype"), SOFTMAX_ERRORS)
def test_softmax_rejects(module: Any, make: Callable[[], Any], exc: type[Exception], name: str,
                         is_dtype: bool) -> None:
    with raises(exc, name, is_dtype):
        module.softmax(make())


N, C = 4, 5
CE_ERRORS = [
    pytest.param({"logits": [[1.0, 2.0]] * N}, TypeError, "logits", False, id="logits-list"),
    pytest.param({"logits": None}, TypeError, "logits", False, id="logits-None"),
    pytest.param({"logits": np.zeros((N, C), np.int64)}, TypeError, "logits", True,
                 id="logits-int"),
    pytest.param({"logits": np.zeros((N, C), np.complex64)}, TypeError, "logits", True,
                 id="logits-complex"),
    pytest.param({"logits": np.zeros(C)}, ValueError, "logits", False, id="logits-1d"),
    pytest.param({"logits": np.zeros((1, N, C))}, ValueError, "logits", False, id="logits-3d"),
    pytest.param({"logits": np.zeros((N, 0))}, ValueError, "logits", False, id="logits-C0"),
    pytest.param({"targets": np.zeros(N)}, TypeError, "targets", True, id="targets-float"),
    pytest.param({"targets": np.zeros(N, bool)}, TypeError, "targets", True, id="targets-bool"),
    pytest.param({"targets": [0] * N}, TypeError, "targets", False, id="targets-list"),
    pytest.param({"targets": None}, TypeError, "targets", False, id="targets-None"),
    pytest.param({"targets": np.zeros(BAD, int)}, ValueError, "targets", False,
                 id="targets-length"),
    pytest.param({"targets": np.zeros((N, 1), int)}, ValueError, "targets", False,
                 id="targets-2d"),
    pytest.param({"targets": np.array([0, 1, C, 2])}, ValueError, "targets", False,
                 id="targets-C"),
    pytest.param({"targets": np.array([0, 1, -1, 2])}, ValueError, "targets", False,
                 id="targets-negative"),
    pytest.param({"targets": np.array([0, 1, 2, 2**64 - 1], np.uint64)}, ValueError, "targets",
                 False, id="targets-uint64-huge"),
    pytest.param({"targets": np.array([0, 1, -100, 2]), "ignore_index": -1}, ValueError,
                 "targets", False, id="targets-other-ignore_index"),
    pytest.param({"ignore_index": "none"}, TypeError, "ignore_index", False,
                 id="ignore_index-str"),
    pytest.param({"ignore_index": 1.5}, TypeError, "ignore_index", False,
                 id="ignore_index-float"),
]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize(("overrides", "exc", "name", "is_dtype"), CE_ERRORS)
def test_cross_entropy_rejects(module: Any, overrides: dict[str, Any], exc: type[Exception],
                               name: str, is_dtype: bool) -> None:
    args: dict[str, Any] = {"logits": np.zeros((N, C)), "targets": np.array([0, 1, 2, 4]),
                            "ignore_index": -100}
    args.update(overrides)
    with raises(exc, name, is_dtype):
        module.softmax_cross_entropy(args["logits"], args["targets"],
                                     ignore_index=args["ignore_index"])


@pytest.mark.parametrize("module", MODULES)
def test_cross_entropy_accepts_any_integer_targets(module: Any) -> None:
    logits = np.random.default_rng(0).normal(size=(N, C))
    expected = module.softmax_cross_entropy(logits, np.array([0, 1, 2, 4]))
    for dt in (np.int8, np.uint8, np.int32, np.uint64):
        loss, dlogits = module.softmax_cross_entropy(logits, np.array([0, 1, 2, 4], dt))
        assert loss == expected.loss
        np.testing.assert_array_equal(dlogits, expected.dlogits)


# ----------------------------------------------------------------------------- memory layouts


def _noncontiguous(a: np.ndarray) -> np.ndarray:
    """Every second element of a larger last axis."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype) if a.ndim else np.zeros(2)
    view = big[..., ::2]
    view[...] = a
    return view


def _negative_strides(a: np.ndarray) -> np.ndarray:
    """The same values through a view with negative strides on every axis."""
    return np.flip(np.flip(a).copy())


def _misaligned(a: np.ndarray) -> np.ndarray:
    """The same values at an address one byte off the dtype's alignment."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    view = buf[1:].view(a.dtype).reshape(a.shape)
    view[...] = a
    assert a.dtype.alignment == 1 or not view.flags.aligned or a.size == 0
    return view


def _byteswapped(a: np.ndarray) -> np.ndarray:
    """The same values stored in the other byte order."""
    return a.astype(a.dtype.newbyteorder("S"))


def _readonly(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


LAYOUTS = {
    "noncontiguous": _noncontiguous,
    "fortran": np.asfortranarray,
    "negative-strides": _negative_strides,
    "misaligned": _misaligned,
    "byteswapped": _byteswapped,
    "readonly": _readonly,
}


def relayout(args: dict[str, Any], layout: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
    out = {k: layout(v) if isinstance(v, np.ndarray) else v for k, v in args.items()}
    for k, v in args.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(out[k], v)
    return out


def assert_same(actual: Any, expected: Any) -> None:
    """Result tuples equal field by field, exactly (cache excepted)."""
    for name in expected._fields:
        if name != "cache":
            a, e = getattr(actual, name), getattr(expected, name)
            if e is None:
                assert a is None, name
            else:
                assert a.dtype == e.dtype, name
                np.testing.assert_array_equal(a, e, err_msg=name, strict=True)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cell", CELLS)
def test_layouts_give_the_contiguous_result(module: Any, cell: str, layout: str) -> None:
    args = base_case(cell, np.float64)
    grads = make_output_grads(cell, T, B, H, np.float64, seed=6)
    out = forward(module, cell)(**args)
    expected = backward(module, cell)(out.cache, **grads)
    strange = relayout(args, LAYOUTS[layout])
    strange_out = forward(module, cell)(**strange)
    assert_same(strange_out, out)
    assert_same(backward(module, cell)(strange_out.cache, **relayout(grads, LAYOUTS[layout])),
                expected)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_softmax_and_loss(module: Any, layout: str) -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(size=(N, C)).astype(np.float32)  # (N, C)
    targets = np.array([0, -100, 2, 4])
    change = LAYOUTS[layout]
    np.testing.assert_array_equal(module.softmax(change(z)), module.softmax(z), strict=True)
    loss, dlogits = module.softmax_cross_entropy(change(z), change(targets))
    expected = module.softmax_cross_entropy(z, targets)
    assert loss == expected.loss
    np.testing.assert_array_equal(dlogits, expected.dlogits, strict=True)


# ----------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", CELLS)
def test_empty_batch(module: Any, cell: str, dtype: Any) -> None:
    G = GATES[cell]
    args = make_case(cell, T, 0, I, H, dtype, lengths=np.zeros(0, np.int64))
    out = forward(module, cell)(**args)
    assert out.y.shape == (T, 0, H) and out.y.dtype == dtype
    assert out.h_n.shape == (0, H)
    grads = make_output_grads(cell, T, 0, H, dtype)
    g = backward(module, cell)(out.cache, **grads)
    assert g.dx.shape == (T, 0, I) and g.dx.dtype == dtype
    assert g.dh0.shape == (0, H)
    for name, shape in (("dw_ih", (G * H, I)), ("dw_hh", (G * H, H)), ("db_ih", (G * H,)),
                        ("db_hh", (G * H,))):
        grad = getattr(g, name)
        assert grad.shape == shape and grad.dtype == dtype and not grad.any(), name
    if cell == "lstm":
        assert out.c_n.shape == (0, H) and g.dc0.shape == (0, H)
    assert forward(module, cell)(**args, training=False).y.shape == (T, 0, H)


@pytest.mark.parametrize("module", MODULES)
def test_empty_softmax_and_loss(module: Any) -> None:
    assert module.softmax(np.zeros((0, C))).shape == (0, C)
    assert module.softmax(np.zeros((3, 0))).shape == (3, 0)
    loss, dlogits = module.softmax_cross_entropy(np.zeros((0, C), np.float32),
                                                 np.zeros(0, np.int64))
    assert loss == 0.0 and dlogits.shape == (0, C) and dlogits.dtype == np.float32


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("cell", CELLS)
def test_no_input_is_modified_and_backward_repeats(module: Any, cell: str) -> None:
    args = base_case(cell)
    grads = make_output_grads(cell, T, B, H, np.float32, seed=6)
    args_before, grads_before = copy.deepcopy(args), copy.deepcopy(grads)
    out = forward(module, cell)(**args)
    first = backward(module, cell)(out.cache, **grads)
    second = backward(module, cell)(out.cache, **grads)
    assert_same(second, first)
    for before, after in ((args_before, args), (grads_before, grads)):
        for k, v in before.items():
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(after[k], v, err_msg=k, strict=True)
    # a second forward on the same inputs gives the same results and gradients
    again = forward(module, cell)(**args)
    assert_same(again, out)
    assert_same(backward(module, cell)(again.cache, **grads), first)


@pytest.mark.parametrize("module", MODULES)
def test_loss_does_not_modify_inputs(module: Any) -> None:
    logits = np.random.default_rng(3).normal(size=(N, C))
    targets = np.array([0, -100, 2, 4])
    logits_before, targets_before = logits.copy(), targets.copy()
    module.softmax(logits)
    module.softmax_cross_entropy(logits, targets)
    np.testing.assert_array_equal(logits, logits_before)
    np.testing.assert_array_equal(targets, targets_before)
