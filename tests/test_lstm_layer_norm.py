"""The fused layer-normalized LSTM (ln_gates, ln_cell) of the compiled kernels: against the
float64 reference on every ISA of the machine (with and without peepholes and a projection),
float64 to 1e-10, by central differences, the same bits on 1 and 2 threads, bf16 against the
reference's bf16, a pack equal to the call, and what the kernels refuse.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from rnnkern_testing import as_dtype, make_lstm_variant_case, make_output_grads, rnn_acc_len
from test_kernels_vs_reference import OPTIONS, _id, compare
from test_lstm_projection import (
    assert_bf16_matches_reference,
    assert_central_differences,
    assert_float64_close_to_reference,
    isa,
    run,
)
from test_lstm_variants import assert_pack_equals_call

import rnnkern
import rnnkern.reference

__all__ = ["isa"]  # the fixture: every ISA of the machine in turn
# (T, B, I, H): T = 1, B = 1, odd H, below, between and above every ISA's block
KERNEL_SHAPES = [(1, 1, 1, 2), (1, 3, 5, 7), (7, 1, 3, 8), (3, 4, 17, 33), (13, 3, 7, 17)]
LN_GRADS = ("dln_gates", "dln_cell")


def case_and_grads(shape: tuple[int, ...], dtype: Any, options: dict[str, Any], seed: int,
                   peep: bool = False, proj: bool = False
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A layer-normalized LSTM case (with peepholes if ``peep``, a projection to P = H // 2
    (at least 1) if ``proj``) and incoming gradients per ``options``."""
    T, B, I, H = shape
    case = make_lstm_variant_case("all" if proj else "ln", T, B, I, H, dtype,
                                  bias=options["bias"], h0=options["h0"],
                                  lengths=options["lengths"], seed=seed)
    case.pop("w_peep", None)
    if peep:
        case["w_peep"] = make_lstm_variant_case("peep", T, B, I, H, dtype, seed=seed)["w_peep"]
    grads: dict[str, Any] = make_output_grads("lstm", T, B, H, dtype, seed=seed + 1,
                                              P=case["w_hh"].shape[1])
    for name in grads:
        if not options[name]:
            grads[name] = None
    return case, grads


VARIANTS = {"ln": (False, False), "ln+peep": (True, False), "ln+proj": (False, True),
            "ln+proj+peep": (True, True)}  # (peep, proj)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("options", OPTIONS, ids=_id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=_id)
@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=_id)
def test_layer_norm_kernels_match_reference(isa: str, shape: tuple[int, ...], dtype: Any,
                                            options: dict[str, Any], variant: str) -> None:
    """Forward, backward (dln_gates, dln_cell; dw_hr with a projection, dw_peep with
    peepholes) and inference of the fused layer norm against the float64 reference, within
    docs/tolerances.md; padded steps zero."""
    T, B, I, H = shape
    peep, proj = VARIANTS[variant]
    case, grads = case_and_grads(shape, dtype, options, KERNEL_SHAPES.index(shape), peep, proj)
    out, g = run(rnnkern, case, grads)
    ref_out, ref_g = run(rnnkern.reference, as_dtype(case, np.float64),
                         as_dtype(grads, np.float64))
    acc_len = rnn_acc_len("lstm", T, B, I, H)
    inference = rnnkern.lstm_forward(**case, training=False)
    own_out, own_g = run(rnnkern.reference, case, grads) if dtype == np.float32 else (0, 0)
    for got, want, own in ((out, ref_out, own_out), (g, ref_g, own_g),
                           (inference, ref_out, own_out)):
        if dtype == np.float64:
            compare(got, want, dtype, acc_len)
        else:
            compare_float32(got, want, own)
    assert g._fields[7:] == (("dw_hr",) * proj + ("dw_peep",) * peep + LN_GRADS)
    if case["lengths"] is not None:
        padded = np.arange(T)[:, None] >= case["lengths"][None, :]  # (T, B)
        assert np.all(out.y[padded] == 0) and np.all(g.dx[padded] == 0)


def compare_float32(actual: Any, expected: Any, own: Any) -> None:
    """float32 layer norm against the float64 reference: every array within 1e-3 of its
    largest magnitude, or within 8x the float32 reference's (``own``) own error if larger.

    The norms' backward subtracts row means (d - mean(d) - z mean(d z)) and multiplies by rstd,
    so an element near 0 keeps only the absolute error of the row, and docs/tolerances.md's
    per-element bound (made for the plain cells' sums) does not hold for it; float64 is held to
    those bounds and to 1e-10 (test_layer_norm_float64_close_...). An array that is all
    cancellation (exactly 0 but for eps's part: with I = 1, N(W_ih x) does not depend on |x|, so
    dx is about 1e-8) is held to 1e-6 absolute, a thousandth of the unit-scale inputs'. Some
    random cases are chaotic (with a projection, at T = 13, H = 17, P = 8 the float32
    reference's own error grows 3x per step to 9e-5 of max |y| and 3e-4 of the gradients), so
    any two float32 evaluations drift apart, each from float64 and from the other."""
    for name in actual._fields:
        a, e, o = getattr(actual, name), getattr(expected, name), getattr(own, name)
        if name == "cache" or e is None:
            assert name == "cache" or a is None, name
            continue
        atol = 1e-3 * max(float(np.abs(e).max()), 1e-3)
        np.testing.assert_allclose(a, e, rtol=0, atol=max(atol, 8 * float(np.abs(o - e).max())),
                                   err_msg=name)


@pytest.mark.parametrize("proj", [False, True], ids=["ln+peep", "ln+proj+peep"])
def test_layer_norm_float64_close_to_reference(proj: bool) -> None:
    """float64 kernels against the float64 reference: ~1e-10 relative (only the order of the
    sums differs)."""
    case, grads = case_and_grads((6, 5, 7, 20), np.float64, OPTIONS[1], seed=3, peep=True,
                                 proj=proj)
    assert_float64_close_to_reference(case, grads)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_layer_norm_kernels_by_central_differences(variant: str) -> None:
    """Every gradient of the kernels' layer-normalized LSTM (float64, lengths, with and without
    peepholes and a projection) against central differences of L = sum(y gy) + sum(h_n gh) +
    sum(c_n gc), at random entries."""
    T, B, I, H = 4, 3, 3, 5
    peep, proj = VARIANTS[variant]
    case, grads = case_and_grads((T, B, I, H), np.float64, OPTIONS[0], seed=9, peep=peep,
                                 proj=proj)
    case["lengths"] = np.array([4, 2, 1])
    assert_central_differences(case, grads, (
        ("x", "dx"), ("h0", "dh0"), ("c0", "dc0"), ("w_ih", "dw_ih"), ("w_hh", "dw_hh"),
        ("b_ih", "db_ih"), ("b_hh", "db_hh"), ("ln_gates", "dln_gates"),
        ("ln_cell", "dln_cell"), *((("w_peep", "dw_peep"),) if peep else ()),
        *((("w_hr", "dw_hr"),) if proj else ())))


@pytest.mark.parametrize("proj", [False, True], ids=["ln+peep", "ln+proj+peep"])
def test_layer_norm_same_bits_on_any_thread_count(num_threads: Callable[[int], None],
                                                  proj: bool) -> None:
    """Each thread computes the rows' statistics whole and the gains' gradients are summed by
    each hidden block's owner: the same bits on 1 and 2 threads, forward, inference and
    backward."""
    case, grads = case_and_grads((20, 8, 64, 128), np.float32, OPTIONS[0], seed=4, peep=True,
                                 proj=proj)
    case["lengths"] = np.random.default_rng(5).integers(1, 21, 8)
    results = []
    for n in (1, 2):
        num_threads(n)
        out, g = run(rnnkern, case, grads)
        inf = rnnkern.lstm_forward(**case, training=False)
        results.append({**{f"f.{k}": v for k, v in out._asdict().items() if k != "cache"},
                        **{f"i.{k}": v for k, v in inf._asdict().items() if k != "cache"},
                        **{f"b.{k}": v for k, v in g._asdict().items()}})
    for name, a in results[0].items():
        np.testing.assert_array_equal(a, results[1][name], err_msg=name)


@pytest.mark.parametrize("proj", [False, True], ids=["ln+peep", "ln+proj+peep"])
def test_layer_norm_bf16_matches_reference(proj: bool) -> None:
    """precision='bf16' with layer norm: the reference's bf16 (the products' operands rounded;
    the norms in float) within float32 rounding."""
    case, grads = case_and_grads((5, 4, 6, 16), np.float32, OPTIONS[0], seed=2, peep=True,
                                 proj=proj)
    assert_bf16_matches_reference(case, grads)


@pytest.mark.parametrize("proj", [False, True], ids=["ln+peep", "ln+proj+peep"])
def test_packed_layer_norm_equals_the_call(proj: bool) -> None:
    """lstm_pack(..., ln_gates=, ln_cell=) gives the bits of lstm_forward with them, the
    gradients too, one step included; the pack is a snapshot."""
    case, grads = case_and_grads((4, 3, 5, 9), np.float64, OPTIONS[2], seed=6, peep=True,
                                 proj=proj)
    pack = assert_pack_equals_call(case, grads, ("w_peep", "ln_gates", "ln_cell",
                                                 *("w_hr",) * proj))
    assert "layer-norm" in repr(pack)
    step = pack.forward(case["x"][:1], case["h0"], case["c0"])
    one = rnnkern.lstm_forward(**{**case, "x": case["x"][:1], "lengths": None})
    np.testing.assert_array_equal(step.y, one.y)


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_backward_adds_into_given_gradients(bias: bool) -> None:
    """The core's backward with ``into`` (what the cells' step loops use) adds every weight
    gradient, the layer norm's and the biases' included, to the arrays given: ones + the plain
    backward's gradients, float64 to 1e-12 (one addition apart)."""
    options = {**OPTIONS[2], "bias": bias}
    case, grads = case_and_grads((4, 3, 5, 9), np.float64, options, seed=7, peep=True)
    out, g = run(rnnkern, case, grads)
    cache = out.cache
    into = tuple(None if a is None else np.ones_like(a) for a in g[3:])
    res = rnnkern._core.backward_packed(cache.pack, cache.x, cache.lengths, cache.buffers,
                                        grads["dy"], grads["dh_n"], grads["dc_n"], into)
    assert len(res) == 3  # dx, dh0, dc0: the weights' gradients went into `into`
    for name, want, got in zip(g._fields[3:], g[3:], into):
        assert (want is None) == (got is None), name
        if want is not None:
            np.testing.assert_allclose(got, 1 + want, rtol=1e-12, atol=1e-12, err_msg=name)
    for name, want, got in zip(g._fields[:3], g[:3], res):
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_layer_norm_refusals() -> None:
    """The kernels have no int8 layer norm (ValueError naming ln_gates)."""
    ln = make_lstm_variant_case("ln", 3, 2, 4, 6, np.float32, seed=1)
    with pytest.raises(ValueError, match="ln_gates: layer norm has no int8 kernels"):
        rnnkern.lstm_forward(**ln, training=False, precision="int8")


# ------------------------------------------------------------------- rnnkern.nn.LSTM's keywords

VARIANT_KW = [{"peephole": True}, {"layer_norm": True}, {"peephole": True, "layer_norm": True}]


def _kw_id(kw: dict[str, bool]) -> str:
    return "+".join(kw)


@pytest.mark.parametrize("kw", VARIANT_KW, ids=_kw_id)
def test_layer_parameters_and_reference(kw: dict[str, bool]) -> None:
    """The variants' parameters (names, shapes, initial values) and a one-layer forward and
    backward equal to rnnkern.reference with them."""
    from rnnkern.nn import LSTM
    T, B, I, H = 5, 3, 4, 6
    layer = LSTM(I, H, dtype=np.float64, seed=0, **kw)
    names = list(layer.params)
    assert names[:4] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    assert names[4:] == [n for n, on in (("weight_peep_l0", "peephole" in kw),
                                         ("ln_gates_l0", "layer_norm" in kw),
                                         ("ln_cell_l0", "layer_norm" in kw)) if on]
    if "layer_norm" in kw:
        np.testing.assert_array_equal(layer.params["ln_gates_l0"], np.ones((2, 4 * H)))
        np.testing.assert_array_equal(layer.params["ln_cell_l0"], [[1] * H, [0] * H])
        layer.load_state_dict({**layer.state_dict(),  # gains and shifts away from 1 and 0
                               **{n: make_lstm_variant_case("ln", T, B, I, H, np.float64)[n[:-3]]
                                  for n in ("ln_gates_l0", "ln_cell_l0")}})
    if "peephole" in kw:
        assert layer.params["weight_peep_l0"].shape == (3, H)
    assert all(f"{k}=True" in repr(layer) for k in kw)
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, H))
    lengths = np.array([5, 2, 4])
    y, (h_n, c_n) = layer(x, lengths=lengths)
    layer.backward(dy)
    p = layer.params
    args = {"w_peep": p.get("weight_peep_l0"), "ln_gates": p.get("ln_gates_l0"),
            "ln_cell": p.get("ln_cell_l0")}
    ref = rnnkern.reference.lstm_forward(x, None, None, p["weight_ih_l0"], p["weight_hh_l0"],
                                         p["bias_ih_l0"], p["bias_hh_l0"], lengths=lengths,
                                         **args)
    np.testing.assert_allclose(y, ref.y, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c_n[0], ref.c_n, rtol=1e-10, atol=1e-12)
    ref_g = rnnkern.reference.lstm_backward(ref.cache, dy)
    for name, field in (("weight_ih_l0", "dw_ih"), ("weight_hh_l0", "dw_hh"),
                        ("bias_ih_l0", "db_ih"), ("weight_peep_l0", "dw_peep"),
                        ("ln_gates_l0", "dln_gates"), ("ln_cell_l0", "dln_cell")):
        if name in p:
            np.testing.assert_allclose(layer.grads[name], getattr(ref_g, field), rtol=1e-9,
                                       atol=1e-11, err_msg=name)


def test_layer_stacked_bidirectional_by_central_differences() -> None:
    """A stacked bidirectional float64 LSTM with peepholes and layer norm, lengths: every
    variant parameter's gradient of the layer's backward (through the shared layer stack)
    against central differences."""
    from rnnkern.nn import LSTM
    T, B, I, H = 4, 3, 2, 3
    layer = LSTM(I, H, num_layers=2, bidirectional=True, peephole=True, layer_norm=True,
                 dtype=np.float64, seed=1)
    rng = np.random.default_rng(2)
    for name, a in layer.params.items():  # gains and shifts away from 1 and 0
        if name.startswith("ln_"):
            a.flags.writeable = True
            a += rng.uniform(-0.3, 0.3, a.shape)
    lengths = np.array([3, 1, 4])
    x, dy = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, 2 * H))
    state = (rng.standard_normal((4, B, H)), rng.standard_normal((4, B, H)))
    dstate = (rng.standard_normal((4, B, H)), rng.standard_normal((4, B, H)))

    def objective() -> float:
        y, (h, c) = layer(x, state, lengths=lengths, training=False)
        return float(np.sum(y * dy) + np.sum(h * dstate[0]) + np.sum(c * dstate[1]))

    layer(x, state, lengths=lengths)
    dx, _ = layer.backward(dy, dstate)
    eps = 1e-6
    checks = [(name, idx) for name in ("weight_peep_l0", "weight_peep_l1_reverse",
                                       "ln_gates_l0_reverse", "ln_gates_l1", "ln_cell_l0",
                                       "ln_cell_l1_reverse", "weight_hh_l1", "bias_ih_l0")
              for idx in [tuple(int(rng.integers(n)) for n in layer.params[name].shape)]]
    for name, idx in checks:
        a = layer.params[name]
        saved = a[idx]
        values = []
        for v in (saved + eps, saved - eps):
            a.flags.writeable = True
            a[idx] = v
            values.append(objective())
        a.flags.writeable = True
        a[idx] = saved
        np.testing.assert_allclose(layer.grads[name][idx], (values[0] - values[1]) / (2 * eps),
                                   rtol=1e-6, atol=1e-8, err_msg=f"{name}{idx}")
    assert np.all(dx[3, 1] == 0)


def test_layer_trains_and_round_trips() -> None:
    """state_dict round trip of a layer-normalized layer with peepholes, and a few Adam steps
    through its backward lower the loss of a small regression."""
    from rnnkern.nn import LSTM
    from rnnkern.optim import Adam
    a = LSTM(3, 8, layer_norm=True, peephole=True, seed=1)
    b = LSTM(3, 8, layer_norm=True, peephole=True, seed=2)
    x = np.random.default_rng(0).standard_normal((6, 4, 3)).astype(np.float32)  # (T, B, I)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a(x)[0], b(x)[0])
    target = np.tanh(np.cumsum(x, axis=0)[..., :1])  # (T, B, 1)
    opt = Adam(a.params, a.grads, lr=0.02)
    losses = []
    for _ in range(60):
        y, _ = a(x)
        err = y[..., :1] - target
        losses.append(float(np.mean(err ** 2)))
        dy = np.zeros_like(y)
        dy[..., :1] = 2 * err / err.size
        a.zero_grad()
        a.backward(dy)
        opt.step()
    assert losses[-1] < 0.5 * losses[0]
    proj = LSTM(3, 8, proj_size=4, layer_norm=True, num_layers=2, seed=1)  # with a projection
    assert {"weight_hr_l1", "ln_gates_l1", "ln_cell_l1"} <= set(proj.params)
    y, (h, c) = proj(x, training=False)
    assert y.shape == (*x.shape[:2], 4) and h.shape == (2, x.shape[1], 4)
    assert c.shape == (2, x.shape[1], 8)
    with pytest.raises(TypeError, match="peephole"):
        LSTM(3, 8, peephole="yes")
