"""The fused LSTM projection (w_hr, PyTorch's proj_size) of the compiled kernels: against the
float64 reference on every ISA of the machine, by central differences, against torch.nn.LSTM
(proj_size=P) through rnnkern.nn.LSTM and rnnkern.torch.LSTM (stacked, bidirectional,
batch_first, packed lengths), the same bits on 1 and 2 threads, bad arguments (packs: in
tests/test_lstm_variants.py).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from rnnkern_testing import as_dtype, make_lstm_variant_case, make_output_grads, rnn_acc_len
from test_kernels_vs_reference import OPTIONS, _id, compare
from test_torch_functional import TOL, torch_run

import rnnkern
import rnnkern.nn
import rnnkern.reference
import rnnkern.torch as rt

# torch's own projection LSTM in float32 says it leaves oneDNN for its generic implementation
pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning")

SUPPORTED = rnnkern.config()["supported_isas"]
DEFAULT_ISA = rnnkern.config()["isa"]
# (T, B, I, H, P): T = 1, B = 1, P = 1, odd H and P, below, between and above every ISA's block
KERNEL_SHAPES = [(1, 1, 1, 2, 1), (1, 3, 5, 7, 3), (7, 1, 3, 8, 5), (3, 4, 17, 33, 16),
                 (13, 3, 7, 17, 9)]


@pytest.fixture(params=SUPPORTED)
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each ISA this machine runs, in turn; the default one back afterwards."""
    rnnkern.set_isa(request.param)
    yield request.param
    rnnkern.set_isa(DEFAULT_ISA)


def case_and_grads(shape: tuple[int, ...], dtype: Any, options: dict[str, Any], seed: int,
                   peep: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """A projected LSTM case (with peepholes if ``peep``) and incoming gradients per ``options``."""
    T, B, I, H, P = shape
    case = make_lstm_variant_case("proj", T, B, I, H, dtype, P=P, bias=options["bias"],
                                  h0=options["h0"], lengths=options["lengths"], seed=seed)
    if peep:
        case["w_peep"] = make_lstm_variant_case("peep", T, B, I, H, dtype, seed=seed)["w_peep"]
    grads: dict[str, Any] = make_output_grads("lstm", T, B, H, dtype, seed=seed + 1, P=P)
    for name in grads:
        if not options[name]:
            grads[name] = None
    return case, grads


def run(backend: Any, case: dict[str, Any], grads: dict[str, Any], **kw: Any) -> tuple[Any, Any]:
    out = backend.lstm_forward(**case, **kw)
    return out, backend.lstm_backward(out.cache, **grads)


@pytest.mark.parametrize("peep", [False, True], ids=["proj", "proj+peep"])
@pytest.mark.parametrize("options", OPTIONS[:2], ids=_id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=_id)
@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=_id)
def test_projection_kernels_match_reference(isa: str, shape: tuple[int, ...], dtype: Any,
                                            options: dict[str, Any], peep: bool) -> None:
    """Forward, backward (dw_hr, and dw_peep with peepholes) and inference of the fused
    projection against the float64 reference, within docs/tolerances.md; padded steps zero."""
    T, B, I, H, P = shape
    case, grads = case_and_grads(shape, dtype, options, KERNEL_SHAPES.index(shape), peep)
    out, g = run(rnnkern, case, grads)
    ref_out, ref_g = run(rnnkern.reference, as_dtype(case, np.float64),
                         as_dtype(grads, np.float64))
    acc_len = rnn_acc_len("lstm", T, B, I, H)
    compare(out, ref_out, dtype, acc_len)
    compare(g, ref_g, dtype, acc_len)
    assert g._fields[7:] == (("dw_hr", "dw_peep") if peep else ("dw_hr",))
    assert out.y.shape == (T, B, P) and g.dh0.shape == (B, P) and g.dw_hh.shape == (4 * H, P)
    if case["lengths"] is not None:
        padded = np.arange(T)[:, None] >= case["lengths"][None, :]  # (T, B)
        assert np.all(out.y[padded] == 0) and np.all(g.dx[padded] == 0)
    compare(rnnkern.lstm_forward(**case, training=False), ref_out, dtype, acc_len)


def test_projection_float64_close_to_reference() -> None:
    """float64 kernels against the float64 reference: ~1e-10 relative (only the order of the
    sums differs)."""
    case, grads = case_and_grads((6, 5, 7, 20, 9), np.float64, OPTIONS[1], seed=3, peep=True)
    assert_float64_close_to_reference(case, grads)


def assert_float64_close_to_reference(case: dict[str, Any], grads: dict[str, Any]) -> None:
    """Every output and gradient of the kernels on a float64 case within 1e-10 relative (1e-12
    absolute) of the float64 reference's."""
    out, g = run(rnnkern, case, grads)
    ref_out, ref_g = run(rnnkern.reference, case, grads)
    for name, a in [*out._asdict().items(), *g._asdict().items()]:
        if isinstance(a, np.ndarray):
            want = getattr(ref_out if name in out._fields else ref_g, name)
            np.testing.assert_allclose(a, want, rtol=1e-10, atol=1e-12, err_msg=name)


def test_projection_kernels_by_central_differences() -> None:
    """Every gradient of the kernels' projected LSTM (float64, lengths, peepholes) against
    central differences of L = sum(y gy) + sum(h_n gh) + sum(c_n gc), at random entries."""
    T, B, I, H, P = 4, 3, 3, 5, 2
    case, grads = case_and_grads((T, B, I, H, P), np.float64, OPTIONS[0], seed=9, peep=True)
    case["lengths"] = np.array([4, 2, 1])
    assert_central_differences(case, grads, (
        ("x", "dx"), ("h0", "dh0"), ("c0", "dc0"), ("w_ih", "dw_ih"), ("w_hh", "dw_hh"),
        ("b_ih", "db_ih"), ("b_hh", "db_hh"), ("w_hr", "dw_hr"), ("w_peep", "dw_peep")))


def assert_central_differences(case: dict[str, Any], grads: dict[str, Any],
                               names: tuple[tuple[str, str], ...]) -> None:
    """The kernels' lstm_backward on a float64 case: each gradient (argument, field) of
    ``names`` against central differences of L = sum(y gy) + sum(h_n gh) + sum(c_n gc) at four
    random entries, to 1e-6."""
    g = run(rnnkern, case, grads)[1]

    def loss(c: dict[str, Any]) -> float:
        out = rnnkern.lstm_forward(**c, training=False)
        return float(np.sum(out.y * grads["dy"]) + np.sum(out.h_n * grads["dh_n"])
                     + np.sum(out.c_n * grads["dc_n"]))

    rng = np.random.default_rng(0)
    eps = 1e-6
    for name, field in names:
        for _ in range(4):
            idx = tuple(int(rng.integers(n)) for n in case[name].shape)
            plus, minus = ({**case, name: case[name].copy()} for _ in range(2))
            plus[name][idx] += eps
            minus[name][idx] -= eps
            numeric = (loss(plus) - loss(minus)) / (2 * eps)
            np.testing.assert_allclose(getattr(g, field)[idx], numeric, rtol=1e-6, atol=1e-8,
                                       err_msg=f"{field}{idx}")


@pytest.mark.parametrize("shape", [(20, 8, 64, 128, 64), (20, 8, 64, 137, 68)],
                         ids=["even", "odd-split"])
def test_projection_same_bits_on_any_thread_count(shape: tuple[int, ...]) -> None:
    """The projection's phases split h's P units and dW_hr's columns among the team: the same
    bits on 1, 2 and 3 threads (three calls each: a call may find the workers asleep and run on
    the caller alone), forward, inference and backward. H = 137 is 18 blocks, which
    two threads split 9 + 9: dW_hr's columns went to them unpaired (product() takes blocks two
    by two from a range's start), and its bits depended on the thread count."""
    case, grads = case_and_grads(shape, np.float32, OPTIONS[0], seed=4)
    case["lengths"] = np.random.default_rng(5).integers(1, 21, 8)
    before = rnnkern.get_num_threads()
    results = []
    try:
        for n in (1, 2, 2, 2, 3, 3, 3):  # a first call may find the workers asleep
            rnnkern.set_num_threads(n)
            out, g = run(rnnkern, case, grads)
            inf = rnnkern.lstm_forward(**case, training=False)
            results.append({**{f"f.{k}": v for k, v in out._asdict().items() if k != "cache"},
                            **{f"i.{k}": v for k, v in inf._asdict().items() if k != "cache"},
                            **{f"b.{k}": v for k, v in g._asdict().items()}})
    finally:
        rnnkern.set_num_threads(before)
    for other in results[1:]:
        for name, a in results[0].items():
            np.testing.assert_array_equal(a, other[name], err_msg=name)


def test_projection_bf16_matches_reference() -> None:
    """precision='bf16' with a projection: the reference's bf16 (both operands of every product
    rounded, W_hr m_t's included) within float32 rounding."""
    case, grads = case_and_grads((5, 4, 6, 16, 8), np.float32, OPTIONS[0], seed=2)
    assert_bf16_matches_reference(case, grads)


def assert_bf16_matches_reference(case: dict[str, Any], grads: dict[str, Any]) -> None:
    """The kernels' precision='bf16' forward and backward on an LSTM variant's case against the
    reference's bf16: outputs within 2e-2, gradients within 3e-2 of max(1, their largest)."""
    out, g = run(rnnkern, case, grads, precision="bf16")
    ref_out, ref_g = run(rnnkern.reference, case, grads, precision="bf16")
    for name in ("y", "h_n", "c_n"):
        np.testing.assert_allclose(getattr(out, name), getattr(ref_out, name), rtol=0,
                                   atol=2e-2, err_msg=name)
    for name in g._fields:
        a, e = getattr(g, name), getattr(ref_g, name)
        np.testing.assert_allclose(a, e, rtol=0, atol=3e-2 * max(1.0, float(np.abs(e).max())),
                                   err_msg=name)


def test_packed_projection_checks_h0() -> None:
    """A projected pack's h0 is (B, P)."""
    case, _ = case_and_grads((4, 3, 5, 9, 4), np.float64, OPTIONS[0], seed=6)
    pack = rnnkern.lstm_pack(case["w_ih"], case["w_hh"], None, None, w_hr=case["w_hr"])
    with pytest.raises(ValueError, match=r"h0: expected shape \(B, P\) = \(3, 4\)"):
        pack.forward(case["x"], np.zeros((3, 9)))


def test_bad_projection_arguments() -> None:
    case, _ = case_and_grads((3, 2, 4, 6, 3), np.float64, OPTIONS[0], seed=1)
    with pytest.raises(ValueError, match=r"w_hr: expected shape \(P, H\) = \(3, 6\)"):
        rnnkern.lstm_forward(**{**case, "w_hr": np.zeros((3, 7))})
    with pytest.raises(ValueError, match=r"w_hr: expected shape \(P, H\) = \(P, 6\) with P >= 1"):
        rnnkern.lstm_forward(**{**case, "w_hr": np.zeros((0, 6)), "w_hh": np.zeros((24, 0)),
                                "h0": None})
    with pytest.raises(ValueError, match=r"w_hr: expected shape \(P, H\) = \(3, 6\)"):
        rnnkern.lstm_pack(case["w_ih"], case["w_hh"], None, None, w_hr=np.zeros((6, 3)))
    with pytest.raises(ValueError, match="proj_size"):
        rnnkern.nn.LSTM(4, 6, proj_size=6)


# ----------------------------------------------------------------------------- against torch

NT, NB, NI, NH, NP = 5, 3, 4, 6, 3
LENGTHS = np.array([4, 1, 5])  # unsorted, includes 1 and T


def torch_and_layers(dtype: Any, num_layers: int, bidirectional: bool, batch_first: bool
                     ) -> tuple[torch.nn.LSTM, Any, torch.nn.LSTM]:
    """torch.nn.LSTM(proj_size=NP), rnnkern.nn.LSTM loaded from its state_dict and
    rnnkern.torch.LSTM loaded likewise."""
    torch.manual_seed(num_layers)
    kw = {"num_layers": num_layers, "bidirectional": bidirectional, "batch_first": batch_first}
    module = torch.nn.LSTM(NI, NH, proj_size=NP, dtype=torch.float64, **kw).to(
        torch.float64 if dtype == np.float64 else torch.float32)
    layer = rnnkern.nn.LSTM(NI, NH, proj_size=NP, dtype=dtype, **kw)
    layer.load_state_dict(module.state_dict())
    drop_in = rt.LSTM(NI, NH, proj_size=NP, dtype=module.weight_hh_l0.dtype, **kw)
    drop_in.load_state_dict(module.state_dict())
    return module, layer, drop_in


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=_id)
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first,lengths,with_h0", [(False, None, True),
                                                         (True, LENGTHS, False)],
                         ids=["tm-full-h0", "bf-lengths-noh0"])
def test_projection_layers_against_torch(dtype: Any, num_layers: int, bidirectional: bool,
                                         batch_first: bool, lengths: np.ndarray | None,
                                         with_h0: bool) -> None:
    """rnnkern.nn.LSTM and rnnkern.torch.LSTM with proj_size against torch.nn.LSTM on the same
    weights: outputs, h_n, c_n, dx, dh0, dc0 and every parameter's gradient."""
    module, layer, drop_in = torch_and_layers(dtype, num_layers, bidirectional, batch_first)
    rng = np.random.default_rng(num_layers)
    D = 2 if bidirectional else 1
    x_shape = (NB, NT, NI) if batch_first else (NT, NB, NI)
    y_shape = (NB, NT, D * NP) if batch_first else (NT, NB, D * NP)
    h_shape, c_shape = (num_layers * D, NB, NP), (num_layers * D, NB, NH)
    x = rng.standard_normal(x_shape).astype(dtype)
    state = [rng.standard_normal(s).astype(dtype) if with_h0 else np.zeros(s, dtype)
             for s in (h_shape, c_shape)]
    gy = rng.standard_normal(y_shape).astype(dtype)
    gstate = [rng.standard_normal(s).astype(dtype) for s in (h_shape, c_shape)]
    want = torch_run(module, x, state, lengths, gy, gstate)
    tol = TOL[dtype]

    got_torch = torch_run(drop_in, x, state, lengths, gy, gstate)
    for key in ("y", "dx"):
        np.testing.assert_allclose(got_torch[key], want[key], **tol, err_msg=f"torch {key}")
    for key in ("state", "dstate"):
        for a, e in zip(got_torch[key], want[key]):
            np.testing.assert_allclose(a, e, **tol, err_msg=f"torch {key}")
    assert list(got_torch["grads"]) == list(want["grads"])
    for name, g in want["grads"].items():
        np.testing.assert_allclose(got_torch["grads"][name], g, **tol, err_msg=f"torch {name}")

    y, (h_n, c_n) = layer(x, tuple(state) if with_h0 else None, lengths=lengths)
    dx, (dh0, dc0) = layer.backward(gy, tuple(gstate))
    assert y.shape == y_shape and h_n.shape == h_shape and c_n.shape == c_shape
    for name, a, e in (("y", y, want["y"]), ("h_n", h_n, want["state"][0]),
                       ("c_n", c_n, want["state"][1]), ("dx", dx, want["dx"])):
        np.testing.assert_allclose(a, e, **tol, err_msg=name)
    if with_h0:
        np.testing.assert_allclose(dh0, want["dstate"][0], **tol, err_msg="dh0")
        np.testing.assert_allclose(dc0, want["dstate"][1], **tol, err_msg="dc0")
    assert list(layer.grads) == list(want["grads"])
    for name, g in want["grads"].items():
        np.testing.assert_allclose(layer.grads[name], g, **tol, err_msg=name)


def test_convert_keeps_the_projection() -> None:
    """rnnkern.torch.convert replaces a torch.nn.LSTM with proj_size and computes what it did."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.LSTM(NI, NH, proj_size=NP, num_layers=2,
                                              bidirectional=True))
    x = torch.randn(NT, NB, NI)
    want, (h, c) = model(x)
    converted = rt.convert(model)
    assert isinstance(converted[0], rt.LSTM) and converted[0].proj_size == NP
    got, (h2, c2) = converted(x)
    for a, e in ((got, want), (h2, h), (c2, c)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
