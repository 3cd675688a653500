"""The LSTM variants (projection w_hr, peepholes w_peep, layer norm ln_gates/ln_cell) against
their peers: torch.nn.LSTM(proj_size=P), ONNX Runtime's LSTM with peepholes P (and ONNX's own
conformance case), and the equations of docs/lstm_variants.md written with torch autograd; the
compiled kernels' peepholes against the reference on every ISA the machine runs.

Finite differences of every variant's gradients: tests/test_reference_gradcheck.py. torch,
onnx and onnxruntime are imported at module level on purpose: missing is a failure, not a skip.
"""
from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import helper
from rnnkern_testing import LSTM_VARIANTS, make_lstm_variant_case, make_output_grads, rnn_acc_len
from test_kernels_vs_reference import OPTIONS, _id, check_vs_reference, compare
from test_torch_functional import torch_run

import rnnkern
import rnnkern.reference
from rnnkern._api import LSTM_EXTRAS, LSTMGrads

T, B, I, H, P = 5, 4, 3, 6, 4
LENGTHS = np.array([3, 5, 1, 4])  # unsorted, includes 1 and T
# float64 against float64: the same sums in another order
TOL64 = {"rtol": 1e-9, "atol": 1e-11}
FIELDS = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh")


def run(backend: Any, case: dict[str, Any], grads_in: dict[str, Any]) -> tuple[Any, LSTMGrads]:
    """lstm_forward on ``case`` and lstm_backward with ``grads_in``."""
    out = backend.lstm_forward(**case)
    return out, backend.lstm_backward(out.cache, **grads_in)


# ----------------------------------------------------------------------------- projection


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_projection_against_torch(lengths: np.ndarray | None, bias: bool) -> None:
    """torch.nn.LSTM(I, H, proj_size=P): y, h_n, c_n and every gradient, weight_hr_l0's too."""
    torch.manual_seed(0)
    module = torch.nn.LSTM(I, H, proj_size=P, bias=bias, dtype=torch.float64)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I))  # (T, B, I)
    h0, c0 = rng.standard_normal((1, B, P)), rng.standard_normal((1, B, H))
    gy, gh, gc = (rng.standard_normal(s) for s in ((T, B, P), (1, B, P), (1, B, H)))
    want = torch_run(module, x, [h0, c0], lengths, gy, [gh, gc])

    sd = {n: t.detach().numpy() for n, t in module.state_dict().items()}
    out, grads = run(rnnkern.reference, dict(
        x=x, h0=h0[0], c0=c0[0], w_ih=sd["weight_ih_l0"], w_hh=sd["weight_hh_l0"],
        b_ih=sd.get("bias_ih_l0"), b_hh=sd.get("bias_hh_l0"), lengths=lengths,
        w_hr=sd["weight_hr_l0"]), {"dy": gy, "dh_n": gh[0], "dc_n": gc[0]})
    assert out.y.shape == (T, B, P) and out.h_n.shape == (B, P) and out.c_n.shape == (B, H)
    for name, got, expected in (("y", out.y, want["y"]), ("h_n", out.h_n, want["state"][0][0]),
                                ("c_n", out.c_n, want["state"][1][0]), ("dx", grads.dx, want["dx"]),
                                ("dh0", grads.dh0, want["dstate"][0][0]),
                                ("dc0", grads.dc0, want["dstate"][1][0])):
        np.testing.assert_allclose(got, expected, **TOL64, err_msg=name)
    for field, param in (("dw_ih", "weight_ih_l0"), ("dw_hh", "weight_hh_l0"),
                         ("db_ih", "bias_ih_l0"), ("db_hh", "bias_hh_l0"),
                         ("dw_hr", "weight_hr_l0")):
        if param in want["grads"]:
            np.testing.assert_allclose(getattr(grads, field), want["grads"][param], **TOL64,
                                       err_msg=field)
        else:
            assert getattr(grads, field) is None, field
    assert grads._fields == (*FIELDS, "dw_hr")


# ----------------------------------------------------------------------------- peepholes


def onnx_lstm(case: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ONNX Runtime's LSTM (opset 14) on a case's x, h0, c0, weights, biases, lengths and w_peep:
    returns y (T, B, H), h_n, c_n (B, H)."""
    x = case["x"]
    T_, B_, _ = x.shape
    Hh = case["w_hh"].shape[1]

    def onnx_gates(a: np.ndarray) -> np.ndarray:  # PyTorch's blocks i, f, g, o -> ONNX's i, o, f, c
        return np.concatenate([a[k * Hh:(k + 1) * Hh] for k in (0, 3, 1, 2)])

    p = case["w_peep"]  # rows p_i, p_f, p_o -> ONNX's P: i, o, f
    lengths = case["lengths"] if case["lengths"] is not None else np.full(B_, T_)
    feeds = {
        "X": x, "W": onnx_gates(case["w_ih"])[None], "R": onnx_gates(case["w_hh"])[None],
        "B": np.concatenate([onnx_gates(case["b_ih"]), onnx_gates(case["b_hh"])])[None],
        "sequence_lens": lengths.astype(np.int32),
        "initial_h": case["h0"][None], "initial_c": case["c0"][None],
        "P": np.concatenate([p[0], p[2], p[1]])[None],
    }
    node = helper.make_node("LSTM", list(feeds), ["Y", "Y_h", "Y_c"], hidden_size=Hh)
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    graph = helper.make_graph(
        [node], "lstm_peephole",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in feeds.items()],
        [helper.make_tensor_value_info(n, elem, shape) for n, shape in
         (("Y", (T_, 1, B_, Hh)), ("Y_h", (1, B_, Hh)), ("Y_c", (1, B_, Hh)))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    y, h_n, c_n = session.run(None, feeds)
    return y[:, 0], h_n[0], c_n[0]


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
def test_peepholes_against_onnxruntime(lengths: np.ndarray | None) -> None:
    """ONNX Runtime (float32) against the reference in float64 on the same float32 values;
    random peepholes so that a swapped row (ONNX's i, o, f against our i, f, o) shows."""
    case = make_lstm_variant_case("peep", T, B, I, H, np.float32, seed=3)
    case["w_peep"] *= 4  # peepholes large enough to matter
    case["lengths"] = lengths
    y, h_n, c_n = onnx_lstm(case)
    out = rnnkern.reference.lstm_forward(**{k: v.astype(np.float64) if isinstance(v, np.ndarray)
                                            and v.dtype == np.float32 else v
                                            for k, v in case.items()})
    tol = {"rtol": 1e-5, "atol": 1e-6}  # ORT computes in float32
    np.testing.assert_allclose(y, out.y, **tol, err_msg="y")
    np.testing.assert_allclose(h_n, out.h_n, **tol, err_msg="h_n")
    np.testing.assert_allclose(c_n, out.c_n, **tol, err_msg="c_n")
    no_peep = rnnkern.reference.lstm_forward(**{**case, "w_peep": None})
    assert np.max(np.abs(no_peep.y - y)) > 1e-2  # the peepholes changed the result


def test_onnx_conformance_case_with_peepholes(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX's test_lstm_with_peepholes (onnx.backend.test.case.node.lstm): its inputs and
    expected Y_h, taken from the case's own export function."""
    from onnx.backend.test.case.node import lstm as onnx_case

    cases: list[tuple[Any, ...]] = []
    monkeypatch.setattr(onnx_case, "expect", lambda node, inputs, outputs, name, **_: cases.append(
        (inputs, outputs, name)))
    onnx_case.LSTM.export_peepholes()
    [(inputs, [y_h], name)] = cases
    assert name == "test_lstm_with_peepholes"
    X, W, R, Bias, seq_lens, h0, c0, Pp = inputs
    Hh = R.shape[2]

    def torch_gates(a: np.ndarray) -> np.ndarray:  # ONNX's blocks i, o, f, c -> i, f, g, o
        return np.concatenate([a[k * Hh:(k + 1) * Hh] for k in (0, 2, 3, 1)])

    p = Pp[0].reshape(3, Hh)  # ONNX's i, o, f
    out = rnnkern.reference.lstm_forward(
        X, h0[0], c0[0], torch_gates(W[0]), torch_gates(R[0]),
        torch_gates(Bias[0, :4 * Hh]), torch_gates(Bias[0, 4 * Hh:]),
        lengths=seq_lens.astype(np.int64), w_peep=p[[0, 2, 1]])
    np.testing.assert_allclose(out.h_n, y_h[0], rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- the equations


def torch_variant_lstm(case: dict[str, Any], grads_in: dict[str, Any]) -> dict[str, Any]:
    """docs/lstm_variants.md's equations in torch (F.layer_norm, autograd) on a case's arrays:
    y, h_n, c_n and the gradient of sum(dy*y) + sum(dh_n*h_n) + sum(dc_n*c_n) for every array."""
    args = {k: torch.tensor(v, requires_grad=True) for k, v in case.items()
            if isinstance(v, np.ndarray) and k != "lengths"}
    x, w_ih, w_hh = args["x"], args["w_ih"], args["w_hh"]
    Hh, Bb = w_hh.shape[0] // 4, x.shape[1]
    Pp = w_hh.shape[1]
    h = args.get("h0", torch.zeros(Bb, Pp, dtype=x.dtype))
    c = args.get("c0", torch.zeros(Bb, Hh, dtype=x.dtype))
    lengths = case["lengths"] if case["lengths"] is not None else np.full(Bb, x.shape[0])
    peep = args.get("w_peep", torch.zeros(3, Hh, dtype=x.dtype))
    ys = []
    for t in range(x.shape[0]):
        z_ih, z_hh = x[t] @ w_ih.T, h @ w_hh.T
        if "ln_gates" in args:
            z_ih = torch.nn.functional.layer_norm(z_ih, (4 * Hh,), args["ln_gates"][0], eps=1e-5)
            z_hh = torch.nn.functional.layer_norm(z_hh, (4 * Hh,), args["ln_gates"][1], eps=1e-5)
        a = z_ih + z_hh + (args["b_ih"] + args["b_hh"] if "b_ih" in args else 0)
        a_i, a_f, a_g, a_o = a.split(Hh, dim=1)
        i, f = torch.sigmoid(a_i + peep[0] * c), torch.sigmoid(a_f + peep[1] * c)
        c_new = f * c + i * torch.tanh(a_g)
        o = torch.sigmoid(a_o + peep[2] * c_new)
        n = c_new
        if "ln_cell" in args:
            n = torch.nn.functional.layer_norm(c_new, (Hh,), args["ln_cell"][0],
                                               args["ln_cell"][1], eps=1e-5)
        h_new = o * torch.tanh(n)
        if "w_hr" in args:
            h_new = h_new @ args["w_hr"].T
        valid = torch.tensor(t < lengths)[:, None]
        ys.append(torch.where(valid, h_new, 0))
        h, c = torch.where(valid, h_new, h), torch.where(valid, c_new, c)
    y = torch.stack(ys)
    loss = sum(((g * torch.tensor(grads_in[name])).sum()
                for name, g in (("dy", y), ("dh_n", h), ("dc_n", c))), torch.zeros(()))
    loss.backward()
    return {"y": y.detach().numpy(), "h_n": h.detach().numpy(), "c_n": c.detach().numpy(),
            **{"d" + k: a.grad.numpy() for k, a in args.items() if a.grad is not None}}


@pytest.mark.parametrize("lengths", [None, "random"])
@pytest.mark.parametrize("variant", sorted(LSTM_VARIANTS))
def test_variants_against_torch_autograd(variant: str, lengths: str | None) -> None:
    """Every variant and all three together: outputs and every gradient equal torch autograd's
    on the documented equations (layer norm: torch.nn.functional.layer_norm, eps 1e-5)."""
    case = make_lstm_variant_case(variant, T, B, I, H, np.float64, P=P, lengths=lengths, seed=5)
    grads_in = make_output_grads("lstm", T, B, H, np.float64, seed=6,
                                 P=case["w_hh"].shape[1])
    want = torch_variant_lstm(case, grads_in)
    out, grads = run(rnnkern.reference, case, grads_in)
    for name in ("y", "h_n", "c_n"):
        np.testing.assert_allclose(getattr(out, name), want[name], **TOL64, err_msg=name)
    extras = tuple("d" + n for n in LSTM_EXTRAS if n in case)
    assert grads._fields == (*FIELDS, *extras)
    assert isinstance(grads, LSTMGrads)
    for field in grads._fields:
        np.testing.assert_allclose(getattr(grads, field), want[field],
                                   **TOL64, err_msg=field)


def test_variant_gradients_pickle() -> None:
    """The result with appended gradients survives pickle (multiprocessing returns it)."""
    case = make_lstm_variant_case("all", 2, 2, 3, 4, np.float64, seed=1)
    _, grads = run(rnnkern.reference, case, make_output_grads("lstm", 2, 2, 4, np.float64,
                                                                P=case["w_hh"].shape[1]))
    again = pickle.loads(pickle.dumps(grads))
    assert type(again) is type(grads) and again._fields == grads._fields
    for a, b in zip(again, grads):
        np.testing.assert_array_equal(a, b)


def test_neutral_variants_are_the_plain_lstm() -> None:
    """Zero peepholes and an identity projection give exactly the plain LSTM."""
    case = make_lstm_variant_case("peep", T, B, I, H, np.float64, lengths="random", seed=2)
    grads_in = make_output_grads("lstm", T, B, H, np.float64, seed=3)
    plain_case = {k: v for k, v in case.items() if k != "w_peep"}
    plain_out, plain = run(rnnkern.reference, plain_case, grads_in)
    assert type(plain) is LSTMGrads and len(plain) == 7
    for extra in ({"w_peep": np.zeros((3, H))}, {"w_hr": np.eye(H)}):
        out, grads = run(rnnkern.reference, {**plain_case, **extra}, grads_in)
        for name in ("y", "h_n", "c_n"):
            np.testing.assert_array_equal(getattr(out, name), getattr(plain_out, name))
        for field in FIELDS:
            np.testing.assert_array_equal(getattr(grads, field), getattr(plain, field))


# ----------------------------------------------------------------------------- bad input

BAD = [
    ("w_hr", {"w_hr": np.zeros((P, H + 1))}, ValueError,
     r"w_hr: expected shape \(P, H\) = \(4, 6\)"),
    ("w_hr", {"w_hr": np.zeros((P, H), np.float32)}, TypeError, "w_hr: dtype float32"),
    ("w_hh", {"w_hh": np.zeros((4 * H + 1, P))}, ValueError,
     r"w_hh: expected shape \(G\*H, P\) with G\*H a multiple of G = 4"),
    ("h0", {"h0": np.zeros((B, H))}, ValueError, r"h0: expected shape \(B, P\) = \(4, 4\)"),
    ("c0", {"c0": np.zeros((B, P))}, ValueError, r"c0: expected shape \(B, H\) = \(4, 6\)"),
    ("w_peep", {"w_peep": np.zeros((H, 3))}, ValueError,
     r"w_peep: expected shape \(3, H\) = \(3, 6\)"),
    ("w_peep", {"w_peep": [[0.0] * H] * 3}, TypeError, "w_peep: expected a numpy.ndarray"),
    ("ln_gates", {"ln_gates": np.ones((2, 4 * H)), "ln_cell": np.ones((H,))},
     ValueError, r"ln_cell: expected shape \(2, H\) = \(2, 6\)"),
    ("ln_gates", {"ln_gates": np.ones((2, 4 * P)), "ln_cell": np.ones((2, H))},
     ValueError, r"ln_gates: expected shape \(2, 4H\) = \(2, 24\)"),
    ("ln_cell", {"ln_gates": np.ones((2, 4 * H))}, ValueError,
     "ln_cell: None, but ln_gates is given"),
]


@pytest.mark.parametrize("name, change, error, message", BAD,
                         ids=[f"{b[0]}-{k}" for k, b in enumerate(BAD)])
def test_bad_variant_arguments(name: str, change: dict[str, Any], error: type[Exception],
                               message: str) -> None:
    """Errors name the argument and the expected shape or dtype."""
    case = make_lstm_variant_case("proj", T, B, I, H, np.float64, P=P, seed=1)
    with pytest.raises(error, match=message):
        rnnkern.reference.lstm_forward(**{**case, **change})


def test_backward_checks_projected_shapes() -> None:
    """With a projection dy and dh_n are (T, B, P), (B, P) and dc_n (B, H)."""
    case = make_lstm_variant_case("proj", T, B, I, H, np.float64, P=P, seed=1)
    cache = rnnkern.reference.lstm_forward(**case).cache
    with pytest.raises(ValueError, match=r"dy: expected shape \(T, B, P\) = \(5, 4, 4\)"):
        rnnkern.reference.lstm_backward(cache, np.zeros((T, B, H)))
    with pytest.raises(ValueError, match=r"dc_n: expected shape \(B, H\) = \(4, 6\)"):
        rnnkern.reference.lstm_backward(cache, None, None, np.zeros((B, P)))


# ----------------------------------------------------------------------------- the kernels


SUPPORTED = rnnkern.config()["supported_isas"]
DEFAULT_ISA = rnnkern.config()["isa"]
# (T, B, I, H): T = 1, B = 1, odd H below, between and above every ISA's block of 4..16 lanes
KERNEL_SHAPES = [(1, 1, 1, 1), (1, 3, 5, 7), (7, 1, 3, 8), (3, 4, 17, 33), (13, 3, 7, 17)]


@pytest.fixture(params=SUPPORTED)
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each ISA this machine runs, in turn; the default one back afterwards."""
    rnnkern.set_isa(request.param)
    yield request.param
    rnnkern.set_isa(DEFAULT_ISA)


@pytest.mark.parametrize("options", OPTIONS[:2], ids=_id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=_id)
@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=_id)
def test_peephole_kernels_match_reference(isa: str, shape: tuple[int, int, int, int], dtype: Any,
                                          options: dict[str, Any]) -> None:
    """Forward, backward (dw_peep included) and inference of the fused peephole kernels against
    the float64 reference, within docs/tolerances.md, on every ISA; padded steps exactly zero."""
    T, B, I, H = shape
    seed = KERNEL_SHAPES.index(shape)
    case = make_lstm_variant_case("peep", T, B, I, H, dtype, bias=options["bias"],
                                  h0=options["h0"], lengths=options["lengths"], seed=seed)
    grads = make_output_grads("lstm", T, B, H, dtype, seed=seed + 1)
    for name in grads:
        if not options[name]:
            grads[name] = None
    out, g, ref_out, _ = check_vs_reference("lstm", case, grads, {})
    assert g._fields[7:] == ("dw_peep",)
    if case["lengths"] is not None:
        padded = np.arange(T)[:, None] >= case["lengths"][None, :]  # (T, B)
        assert np.all(out.y[padded] == 0) and np.all(g.dx[padded] == 0)
    inference = rnnkern.lstm_forward(**case, training=False)
    compare(inference, ref_out, dtype, rnn_acc_len("lstm", T, B, I, H))


def test_peephole_kernels_same_bits_on_any_thread_count() -> None:
    """dw_peep is summed by each hidden block's owner: the same bits on 1 and 2 threads."""
    case = make_lstm_variant_case("peep", 20, 8, 64, 64, np.float32, lengths="random", seed=4)
    grads = make_output_grads("lstm", 20, 8, 64, np.float32, seed=5)
    before = rnnkern.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            rnnkern.set_num_threads(n)
            results.append(run(rnnkern, case, grads))
    finally:
        rnnkern.set_num_threads(before)
    (out1, g1), (out2, g2) = results
    for name in ("y", "h_n", "c_n"):
        np.testing.assert_array_equal(getattr(out1, name), getattr(out2, name), err_msg=name)
    for field in g1._fields:
        np.testing.assert_array_equal(getattr(g1, field), getattr(g2, field), err_msg=field)


@pytest.mark.parametrize("variant,name", [("peep", "peepholes"), ("proj", "projection")])
def test_packed_variants_equal_the_call(variant: str, name: str) -> None:
    """lstm_pack(..., w_peep= or w_hr=) gives the bits of lstm_forward with it, its gradient
    too; the pack is a snapshot (changing the array afterwards changes nothing)."""
    (keyword,) = LSTM_VARIANTS[variant]
    case = make_lstm_variant_case(variant, 4, 3, 5, 9, np.float64, P=4, lengths="random", seed=6)
    grads = make_output_grads("lstm", 4, 3, 9, np.float64, seed=7, P=case["w_hh"].shape[1])
    pack = assert_pack_equals_call(case, grads, (keyword,))
    assert name in repr(pack)
    assert (pack.hidden_size, pack.output_size) == (9, case["w_hh"].shape[1])


def assert_pack_equals_call(case: dict[str, Any], grads: dict[str, Any],
                            keywords: tuple[str, ...]) -> Any:
    """lstm_pack with the case's weights and its variant arrays ``keywords`` gives the bits of
    lstm_forward / lstm_backward on the case; the arrays are zeroed after packing (the pack is
    a snapshot). Returns the pack."""
    out, g = run(rnnkern, case, grads)
    extras = {k: case[k].copy() for k in keywords}
    pack = rnnkern.lstm_pack(case["w_ih"], case["w_hh"], case["b_ih"], case["b_hh"], **extras)
    for a in extras.values():
        a[:] = 0
    p_out = pack.forward(case["x"], case["h0"], case["c0"], lengths=case["lengths"])
    p_g = rnnkern.lstm_backward(p_out.cache, **grads)
    np.testing.assert_array_equal(p_out.y, out.y)
    assert p_g._fields == g._fields
    for field in g._fields:
        np.testing.assert_array_equal(getattr(p_g, field), getattr(g, field), err_msg=field)
    return pack


def test_kernels_refuse_bad_variants() -> None:
    """Bad projections and peepholes: the reference's messages (the checks are shared)."""
    proj = make_lstm_variant_case("proj", T, B, I, H, np.float64, P=P, seed=1)
    with pytest.raises(ValueError, match=r"w_hr: expected shape \(P, H\)"):
        rnnkern.lstm_forward(**{**proj, "w_hr": np.zeros((P, H + 1))})
    peep = make_lstm_variant_case("peep", T, B, I, H, np.float64, seed=1)
    with pytest.raises(ValueError, match=r"w_peep: expected shape \(3, H\) = \(3, 6\)"):
        rnnkern.lstm_forward(**{**peep, "w_peep": np.zeros((H, 3))})
    with pytest.raises(TypeError, match="w_peep: dtype float32 does not match"):
        rnnkern.lstm_forward(**{**peep, "w_peep": peep["w_peep"].astype(np.float32)})
    with pytest.raises(ValueError, match=r"w_peep: expected shape \(3, H\) = \(3, 6\)"):
        rnnkern.lstm_pack(peep["w_ih"], peep["w_hh"], None, None, w_peep=np.zeros(3 * H))
