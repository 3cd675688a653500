"""rnnkern.nn.RNN / LSTM / GRU on their own (no torch): shapes, parameters, gradients, errors."""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import numpy as np
import pytest

import rnnkern
from rnnkern import _core, _functional
from rnnkern.nn import GRU, LSTM, RNN

LAYERS: dict[str, Callable[..., Any]] = {
    "rnn_tanh": RNN,
    "rnn_sigmoid": partial(RNN, nonlinearity="sigmoid"),
    "lstm": LSTM,
    "gru": GRU,
    "gru_lbr_false": partial(GRU, linear_before_reset=False),
}
CELLS = list(LAYERS)


def parts(state: Any) -> list[np.ndarray]:
    """A layer state (h or (h, c)) as a list of arrays."""
    return list(state) if isinstance(state, tuple) else [state]


def pack(layer: Any, arrays: list[np.ndarray]) -> Any:
    """A list of arrays as the layer's state: (h, c) for LSTM, h otherwise."""
    return tuple(arrays) if isinstance(layer, LSTM) else arrays[0]


def state_shape(layer: Any, batch: int) -> tuple[int, int, int]:
    return (layer.num_layers * (2 if layer.bidirectional else 1), batch, layer.hidden_size)


def random_problem(layer: Any, steps: int, batch: int, seed: int = 0) -> dict[str, Any]:
    """x, an initial state, dy and dstate of the right shapes and dtype for `layer`."""
    rng = np.random.default_rng(seed)
    dt = layer.dtype
    x_shape = ((batch, steps, layer.input_size) if layer.batch_first
               else (steps, batch, layer.input_size))
    out = (2 if layer.bidirectional else 1) * layer.hidden_size
    y_shape = (batch, steps, out) if layer.batch_first else (steps, batch, out)
    n = 2 if isinstance(layer, LSTM) else 1
    s = state_shape(layer, batch)
    return {
        "x": rng.standard_normal(x_shape).astype(dt),
        "state": pack(layer, [rng.standard_normal(s).astype(dt) for _ in range(n)]),
        "dy": rng.standard_normal(y_shape).astype(dt),
        "dstate": pack(layer, [rng.standard_normal(s).astype(dt) for _ in range(n)]),
    }


def objective(layer: Any, p: dict[str, Any], lengths: Any = None, training: bool = True) -> float:
    """sum(y * dy) + sum(final state * dstate): its gradient is what backward(dy, dstate) gives."""
    y, final = layer(p["x"], p["state"], lengths=lengths, training=training)
    total = float(np.sum(y * p["dy"]))
    for f, g in zip(parts(final), parts(p["dstate"])):
        total += float(np.sum(f * g))
    return total


# -- shapes and parameters ---------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_shapes(cell: str, num_layers: int, bidirectional: bool, batch_first: bool) -> None:
    T, B, I, H = 4, 3, 2, 5
    layer = LAYERS[cell](I, H, num_layers=num_layers, bidirectional=bidirectional,
                         batch_first=batch_first, seed=0)
    p = random_problem(layer, T, B)
    y, state = layer(p["x"], None, lengths=np.array([4, 2, 3]))
    D = 2 if bidirectional else 1
    assert y.shape == ((B, T, D * H) if batch_first else (T, B, D * H))
    assert y.dtype == np.float32
    for s in parts(state):
        assert s.shape == (num_layers * D, B, H) and s.dtype == np.float32
    assert isinstance(state, tuple) == (cell == "lstm")
    dx, dstate = layer.backward(p["dy"], p["dstate"])
    assert dx.shape == p["x"].shape and dx.dtype == np.float32
    assert [s.shape for s in parts(dstate)] == [s.shape for s in parts(state)]


def test_param_names_and_shapes() -> None:
    lstm = LSTM(3, 5, num_layers=2, bidirectional=True)
    want: dict[str, tuple[int, ...]] = {}
    for layer, fan_in in ((0, 3), (1, 10)):
        for suffix in ("", "_reverse"):
            want[f"weight_ih_l{layer}{suffix}"] = (20, fan_in)
            want[f"weight_hh_l{layer}{suffix}"] = (20, 5)
            want[f"bias_ih_l{layer}{suffix}"] = (20,)
            want[f"bias_hh_l{layer}{suffix}"] = (20,)
    assert list(lstm.params) == list(want)
    assert {n: p.shape for n, p in lstm.params.items()} == want
    assert list(lstm.grads) == list(want)
    assert all(g.shape == want[n] and not g.any() for n, g in lstm.grads.items())

    gru = GRU(3, 5, bias=False)
    assert {n: p.shape for n, p in gru.params.items()} == {
        "weight_ih_l0": (15, 3), "weight_hh_l0": (15, 5)}
    rnn = RNN(3, 5, dtype=np.float64)
    assert {n: p.shape for n, p in rnn.params.items()} == {
        "weight_ih_l0": (5, 3), "weight_hh_l0": (5, 5), "bias_ih_l0": (5,), "bias_hh_l0": (5,)}
    assert all(p.dtype == np.float64 for p in rnn.params.values())


def test_init_range_and_seed() -> None:
    layer = LSTM(4, 16, num_layers=2, seed=0)
    bound = 1.0 / np.sqrt(16)
    values = np.concatenate([p.ravel() for p in layer.params.values()])
    assert np.all(np.abs(values) <= bound)
    assert values.min() < -0.9 * bound and values.max() > 0.9 * bound  # spans the interval
    same = LSTM(4, 16, num_layers=2, seed=0)
    other = LSTM(4, 16, num_layers=2, seed=1)
    from_generator = LSTM(4, 16, num_layers=2, seed=np.random.default_rng(0))
    for name, p in layer.params.items():
        np.testing.assert_array_equal(p, same.params[name])
        np.testing.assert_array_equal(p, from_generator.params[name])
        assert not np.array_equal(p, other.params[name])


# -- gradients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_finite_differences(cell: str) -> None:
    """Stacked bidirectional float64 layer with lengths: backward against central differences."""
    T, B, I, H = 4, 3, 2, 3
    lengths = np.array([3, 1, 4])
    layer = LAYERS[cell](I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=1)
    p = random_problem(layer, T, B, seed=2)
    layer(p["x"], p["state"], lengths=lengths)
    dx, dstate = layer.backward(p["dy"], p["dstate"])

    eps = 1e-6

    def numeric(a: np.ndarray, index: tuple[int, ...]) -> float:
        def at(value: float) -> float:  # parameters are read-only until made writeable
            a.flags.writeable = True
            a[index] = value
            return objective(layer, p, lengths)

        saved = a[index]
        up, down = at(saved + eps), at(saved - eps)
        a.flags.writeable = True
        a[index] = saved
        return (up - down) / (2 * eps)

    checks: list[tuple[np.ndarray, tuple[int, ...], np.ndarray]] = [
        (p["x"], (0, 0, 0), dx), (p["x"], (2, 2, 1), dx), (p["x"], (0, 1, 0), dx),
        (p["x"], (3, 1, 1), dx),  # a padded step of sequence 1: gradient exactly zero
    ]
    for k, (s, ds) in enumerate(zip(parts(p["state"]), parts(dstate))):
        checks += [(s, (3, 2, k), ds), (s, (0, 1, 2 - k), ds)]
    params: tuple[tuple[str, tuple[int, ...]], ...] = (
        ("weight_ih_l0", (1, 0)), ("weight_hh_l0_reverse", (2, 1)),
        ("weight_ih_l1_reverse", (0, 4)), ("weight_hh_l1", (-1, 2)),
        ("bias_ih_l1", (1,)), ("bias_hh_l0_reverse", (H - 1,)))
    for name, index in params:
        checks.append((layer.params[name], index, layer.grads[name]))
    for a, index, grad in checks:
        np.testing.assert_allclose(grad[index], numeric(a, index), rtol=1e-6, atol=1e-8,
                                   err_msg=str(index))
    assert np.all(dx[3, 1] == 0)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_per_sequence_equals_batch(cell: str) -> None:
    """With lengths, each sequence (the reverse direction too) is what it gives when run alone."""
    T, B, I, H = 5, 3, 2, 4
    lengths = np.array([2, 5, 1])
    layer = LAYERS[cell](I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=3)
    p = random_problem(layer, T, B)
    y, final = layer(p["x"], p["state"], lengths=lengths, training=False)
    for b, n in enumerate(lengths):
        state_b = pack(layer, [s[:, b:b + 1] for s in parts(p["state"])])
        y_b, final_b = layer(p["x"][:n, b:b + 1], state_b, training=False)
        np.testing.assert_allclose(y[:n, b:b + 1], y_b, rtol=1e-12, atol=1e-14)
        assert np.all(y[n:, b] == 0)
        for f, f_b in zip(parts(final), parts(final_b)):
            np.testing.assert_allclose(f[:, b:b + 1], f_b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm"])
def test_batch_first_equals_time_major(cell: str) -> None:
    tm = LAYERS[cell](3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=5)
    bf = LAYERS[cell](3, 4, num_layers=2, bidirectional=True, batch_first=True,
                      dtype=np.float64, seed=5)
    p = random_problem(tm, 4, 2)
    lengths = [4, 3]
    y, final = tm(p["x"], p["state"], lengths=lengths)
    dx, dstate = tm.backward(p["dy"], p["dstate"])
    y_bf, final_bf = bf(p["x"].transpose(1, 0, 2), p["state"], lengths=lengths)
    dx_bf, dstate_bf = bf.backward(p["dy"].transpose(1, 0, 2), p["dstate"])
    np.testing.assert_array_equal(y_bf, y.transpose(1, 0, 2))
    np.testing.assert_array_equal(dx_bf, dx.transpose(1, 0, 2))
    for a, b in zip(parts(final) + parts(dstate), parts(final_bf) + parts(dstate_bf)):
        np.testing.assert_array_equal(a, b)
    for name, g in tm.grads.items():
        np.testing.assert_array_equal(bf.grads[name], g)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_grads_accumulate_and_zero_grad(cell: str) -> None:
    layer = LAYERS[cell](2, 3, num_layers=2, dtype=np.float64, seed=0)
    p = random_problem(layer, 3, 2)
    layer(p["x"], p["state"])
    layer.backward(p["dy"], p["dstate"])
    once = {n: g.copy() for n, g in layer.grads.items()}
    assert all(g.any() for g in once.values())
    layer.backward(p["dy"], p["dstate"])  # the cache is kept: the same gradients again
    for name, g in layer.grads.items():
        np.testing.assert_allclose(g, 2 * once[name], rtol=1e-14)
    layer.zero_grad()
    assert not any(g.any() for g in layer.grads.values())
    layer(p["x"], p["state"])
    layer.backward(p["dy"], p["dstate"])
    for name, g in layer.grads.items():
        np.testing.assert_array_equal(g, once[name])


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_dy_none_means_only_the_state(cell: str) -> None:
    layer = LAYERS[cell](2, 3, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    p = random_problem(layer, 3, 2)
    layer(p["x"], p["state"], lengths=[3, 2])
    dx, dstate = layer.backward(None, p["dstate"])
    grads = {n: g.copy() for n, g in layer.grads.items()}
    layer.zero_grad()
    dx0, dstate0 = layer.backward(np.zeros_like(p["dy"]), p["dstate"])
    np.testing.assert_array_equal(dx, dx0)
    assert dx.any()
    for a, b in zip(parts(dstate), parts(dstate0)):
        np.testing.assert_array_equal(a, b)
    for name, g in layer.grads.items():
        np.testing.assert_array_equal(g, grads[name])
    # dstate None means zero: with dy also None every gradient is zero
    layer.zero_grad()
    dx, dstate = layer.backward(None)
    assert not dx.any() and not any(s.any() for s in parts(dstate))
    assert not any(g.any() for g in layer.grads.values())


def test_lengths_list_equals_array() -> None:
    layer = GRU(2, 3, bidirectional=True, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 3, 2)).astype(np.float32)  # (T, B, I)
    y_list, h_list = layer(x, lengths=[4, 1, 2])
    y_arr, h_arr = layer(x, lengths=np.array([4, 1, 2], dtype=np.int32))
    np.testing.assert_array_equal(y_list, y_arr)
    np.testing.assert_array_equal(h_list, h_arr)


# -- state_dict --------------------------------------------------------------------------------


def test_state_dict_round_trip() -> None:
    a = LSTM(3, 4, num_layers=2, bidirectional=True, seed=1)
    b = LSTM(3, 4, num_layers=2, bidirectional=True, seed=2)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)  # (T, B, I)
    assert not np.array_equal(a(x)[0], b(x)[0])
    sd = a.state_dict()
    b.load_state_dict(sd)
    np.testing.assert_array_equal(a(x)[0], b(x)[0])
    for name, p in b.state_dict().items():
        np.testing.assert_array_equal(p, sd[name])
    # state_dict returns copies
    for arr in sd.values():
        arr[...] = 0
    assert all(p.any() for p in a.params.values())


def test_load_state_dict_casts_to_layer_dtype() -> None:
    layer = RNN(2, 3, seed=0)  # float32
    sd64 = {n: np.random.default_rng(1).standard_normal(p.shape)
            for n, p in layer.params.items()}  # float64
    layer.load_state_dict(sd64)
    for name, p in layer.params.items():
        assert p.dtype == np.float32
        np.testing.assert_array_equal(p, sd64[name].astype(np.float32))


def test_load_state_dict_errors() -> None:
    layer = GRU(2, 3, num_layers=2, seed=0)
    before = layer.state_dict()
    sd = layer.state_dict()
    del sd["bias_hh_l1"]
    with pytest.raises(KeyError, match="bias_hh_l1"):
        layer.load_state_dict(sd)
    sd = {**layer.state_dict(), "weight_ih_l2": np.zeros((9, 3))}
    with pytest.raises(KeyError, match="weight_ih_l2"):
        layer.load_state_dict(sd)
    sd = {n: p + 1 for n, p in layer.state_dict().items()}
    sd["weight_hh_l1"] = np.zeros((9, 4), np.float32)
    with pytest.raises(ValueError, match=r"weight_hh_l1: expected shape \(9, 3\), got \(9, 4\)"):
        layer.load_state_dict(sd)
    for name, p in layer.params.items():  # nothing was loaded
        np.testing.assert_array_equal(p, before[name])


# -- dropout -----------------------------------------------------------------------------------


def test_dropout_only_in_training_between_layers() -> None:
    x = np.random.default_rng(0).standard_normal((4, 3, 2)).astype(np.float64)  # (T, B, I)
    drop = LSTM(2, 8, num_layers=2, dropout=0.5, dtype=np.float64, seed=4)
    plain = LSTM(2, 8, num_layers=2, dtype=np.float64, seed=4)  # the same parameters
    y_plain, _ = plain(x)
    np.testing.assert_array_equal(drop(x, training=False)[0], y_plain)
    y1, _ = drop(x)
    y2, _ = drop(x)
    assert not np.allclose(y1, y_plain) and not np.allclose(y1, y2)
    # reproducible: the same seed draws the same masks
    np.testing.assert_array_equal(LSTM(2, 8, num_layers=2, dropout=0.5, dtype=np.float64,
                                       seed=4)(x)[0], y1)
    # no dropout after the last layer: one layer is unaffected
    single = GRU(2, 8, dropout=0.5, dtype=np.float64, seed=4)
    np.testing.assert_array_equal(single(x)[0], single(x, training=False)[0])


def test_dropout_backward_finite_differences() -> None:
    """The gradient goes through the same inverted-dropout mask as the forward."""
    def make() -> Any:  # the same seed gives the same parameters and the same first mask
        return RNN(2, 4, num_layers=2, dropout=0.5, bidirectional=True, dtype=np.float64,
                   seed=9)

    layer = make()
    p = random_problem(layer, 3, 2, seed=1)
    layer(p["x"], p["state"])
    dx, _ = layer.backward(p["dy"], p["dstate"])
    eps = 1e-6
    for name, index in (("weight_ih_l0", (1, 0)), ("weight_hh_l0_reverse", (3, 2))):
        values = []
        for sign in (1, -1):
            fresh = make()
            fresh.params[name].flags.writeable = True  # read-only until made writeable
            fresh.params[name][index] += sign * eps
            values.append(objective(fresh, p))
        np.testing.assert_allclose(layer.grads[name][index], (values[0] - values[1]) / (2 * eps),
                                   rtol=1e-6, atol=1e-8)
    for x_index in ((0, 0, 1), (2, 1, 0)):
        values = []
        for sign in (1, -1):
            x = p["x"].copy()
            x[x_index] += sign * eps
            values.append(objective(make(), {**p, "x": x}))
        np.testing.assert_allclose(dx[x_index], (values[0] - values[1]) / (2 * eps),
                                   rtol=1e-6, atol=1e-8)


# -- the functional API is what runs -----------------------------------------------------------


def test_calls_the_functional_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """The layers run the compiled kernels at call time (rnnkern._core, through the stack of
    rnnkern._stack); they pack each (layer, direction)'s weights once (rnnkern._functional), and
    again only after a parameter changed."""
    calls: list[str] = []
    for module, name in ((_functional, "lstm_pack"), (_core, "stack_backward")):
        original = getattr(module, name)

        def spy(*args: Any, _f: Any = original, _n: str = name, **kwargs: Any) -> Any:
            calls.append(_n)
            return _f(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    layer = LSTM(2, 3, num_layers=2, bidirectional=True, seed=0)
    p = random_problem(layer, 3, 2)
    layer(p["x"])
    layer.backward(p["dy"])
    # one backward call for the whole stack
    assert calls == ["lstm_pack"] * 4 + ["stack_backward"]
    layer(p["x"])
    assert calls == ["lstm_pack"] * 4 + ["stack_backward"]
    rnnkern.optim.SGD(layer.params, layer.grads).step()
    layer(p["x"])
    assert calls == ["lstm_pack"] * 4 + ["stack_backward"] + ["lstm_pack"] * 4
    assert rnnkern.nn.LSTM is LSTM


# -- errors ------------------------------------------------------------------------------------


def test_backward_needs_a_training_forward() -> None:
    layer = RNN(2, 3, seed=0)
    x = np.zeros((2, 1, 2), np.float32)  # (T, B, I)
    with pytest.raises(RuntimeError, match="training=True"):
        layer.backward(None)
    layer(x, training=False)
    with pytest.raises(RuntimeError, match="training=True"):
        layer.backward(None)
    layer(x)
    layer.backward(None)
    layer(x, training=False)  # an inference forward drops the saved one
    with pytest.raises(RuntimeError, match="training=True"):
        layer.backward(None)


def _call(layer: Any, x: Any, state: Any = None, lengths: Any = None) -> Callable[[], Any]:
    return lambda: layer(x, state, lengths=lengths)


_X = np.zeros((3, 2, 4), np.float32)  # (T, B, I) for layers with input_size 4
_H = np.zeros((2, 2, 5), np.float32)  # (L*D, B, H) for 2 layers (or bidirectional), hidden 5


@pytest.mark.parametrize("make, exc, match", [
    (lambda: LSTM(0, 5), ValueError, "input_size"),
    (lambda: LSTM(4, -1), ValueError, "hidden_size"),
    (lambda: LSTM(4, 5, num_layers=0), ValueError, "num_layers"),
    (lambda: LSTM(4, 5.0), TypeError, "hidden_size"),
    (lambda: LSTM(4, 5, dropout=1.5), ValueError, "dropout"),
    (lambda: LSTM(4, 5, dtype=np.int32), TypeError, "dtype"),
    (lambda: RNN(4, 5, nonlinearity="gelu"), ValueError, "nonlinearity"),
    (_call(RNN(3, 5), _X), ValueError, r"x: expected shape \(T, B, I\) = \(T, B, 3\)"),
    (_call(RNN(4, 5), _X[0]), ValueError, "x: expected shape"),
    (_call(RNN(4, 5, batch_first=True), np.zeros((2, 3, 3), np.float32)), ValueError,
     r"x: expected shape \(B, T, I\)"),
    (_call(RNN(4, 5), _X.astype(np.float64)), TypeError, "x: dtype float64"),
    (_call(RNN(4, 5), _X.tolist()), TypeError, "x: expected a numpy.ndarray"),
    (_call(RNN(4, 5), np.zeros((0, 2, 4), np.float32)), ValueError, "x: .*T >= 1"),
    (_call(RNN(4, 5), _X, _H), ValueError,
     r"state: expected shape \(L\*D, B, H\) = \(1, 2, 5\), got \(2, 2, 5\)"),
    (_call(GRU(4, 5, num_layers=2), _X, _H.astype(np.float64)), TypeError, "state: dtype"),
    (_call(LSTM(4, 5, num_layers=2), _X, _H), TypeError, r"state: expected a tuple \(h, c\)"),
    (_call(LSTM(4, 5, num_layers=2), _X, (_H, _H[:1])), ValueError, r"state\[1\]: expected"),
    (_call(RNN(4, 5), _X, None, [1, 4]), ValueError, r"lengths: every value must be in 1..T"),
    (_call(RNN(4, 5), _X, None, [0, 1]), ValueError, "lengths: every value"),
    (_call(RNN(4, 5), _X, None, [1, 2, 3]), ValueError, r"lengths: expected shape \(B,\)"),
    (_call(RNN(4, 5), _X, None, [1.0, 2.0]), TypeError, "lengths: dtype"),
    (lambda: RNN(4, 5)(_X, training="yes"), TypeError, "training"),
])
def test_argument_errors(make: Callable[[], Any], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("dy, dstate, match", [
    (np.zeros((3, 2, 5), np.float32), None, r"dy: expected shape \(T, B, D\*H\) = \(3, 2, 10\)"),
    (np.zeros((4, 2, 10), np.float32), None, "dy: expected shape"),
    (np.zeros((3, 2, 10), np.float64), None, "dy: dtype"),
    (None, _H, r"dstate: expected a tuple"),
    (None, (_H, np.zeros((2, 3, 5), np.float32)), r"dstate\[1\]: expected shape"),
])
def test_backward_argument_errors(dy: Any, dstate: Any, match: str) -> None:
    layer = LSTM(4, 5, bidirectional=True, seed=0)
    layer(_X)
    with pytest.raises((ValueError, TypeError), match=match):
        layer.backward(dy, dstate)


def test_repr() -> None:
    assert repr(LSTM(10, 20)) == "LSTM(10, 20)"
    assert repr(LSTM(10, 20, num_layers=2, bias=False, batch_first=True, dropout=0.5,
                     bidirectional=True)) == (
        "LSTM(10, 20, num_layers=2, bias=False, batch_first=True, dropout=0.5, "
        "bidirectional=True)")
    assert repr(RNN(3, 4, nonlinearity="relu", dtype=np.float64)) == (
        "RNN(3, 4, nonlinearity='relu', dtype=float64)")
    assert repr(GRU(3, 4, linear_before_reset=False)) == "GRU(3, 4, linear_before_reset=False)"
