"""rnnkern.torch in lower precision: bfloat16 modules, CPU autocast, convert(precision=...).

A bfloat16 drop-in (``model.to(torch.bfloat16)``) is held to torch's own bfloat16 module on the
same bfloat16 weights and input: the error of y and of every gradient against the float64 answer
on those very values, at most 1.5x torch's (issue 14; docs/tolerances.md, "bf16"). Under
``torch.autocast("cpu", dtype=torch.bfloat16)`` a float32 drop-in gives the dtypes torch's own
module gives there and the bits of the bf16 path. ``convert(model, precision="int8")`` is held
to ONNX Runtime's int8 LSTM error (as tests/test_int8.py) and refuses to record gradients.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from test_int8 import INT8_ERROR, lstm_case, ort_int8_lstm
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import rnnkern
import rnnkern.torch as rt

BF16 = torch.bfloat16
TORCH_CLASSES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
# (num_layers, bidirectional, batch_first, packed)
CONFIGS = [(1, False, False, False), (2, True, True, False), (2, True, False, True)]
LENGTHS = [30, 11, 30, 24]  # (B,) unsorted, with T


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(cell: str, num_layers: int, bidirectional: bool, batch_first: bool, H: int = 32,
         I: int = 24, seed: int = 0) -> torch.nn.RNNBase:
    torch.manual_seed(seed)
    return TORCH_CLASSES[cell](I, H, num_layers=num_layers, bidirectional=bidirectional,
                               batch_first=batch_first)


def run(module: torch.nn.Module, x: torch.Tensor, packed: bool, gy: torch.Tensor | None = None
        ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """y (padded, batch as given) as float64 and, with gy (y's gradient), the gradients of x and
    of every parameter as float64 (x and the parameters in the dtype the caller chose)."""
    x = x.detach().clone().requires_grad_(gy is not None)
    for p in module.parameters():
        p.grad = None
    batch_first = module.batch_first  # type: ignore[union-attr]
    inp: Any = (pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=batch_first,
                                     enforce_sorted=False) if packed else x)
    out = module(inp)[0]
    y = pad_packed_sequence(out, batch_first=batch_first)[0] if packed else out
    if gy is None:
        return y.detach().double().numpy(), {}
    y.backward(gy.to(y.dtype))
    grads = {"x": x.grad.double().numpy()}  # type: ignore[union-attr]
    grads |= {n: p.grad.double().numpy() for n, p in module.named_parameters()}  # type: ignore[union-attr]
    return y.detach().double().numpy(), grads


def rel_err(a: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(a - want).max() / np.abs(want).max())


@pytest.mark.parametrize("config", CONFIGS, ids=["plain", "bidir-2-bf", "bidir-2-packed"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_bf16_module_within_torch_bf16s_error(cell: str, config: tuple[Any, ...]) -> None:
    """model.to(torch.bfloat16): bfloat16 results and gradients, y and every gradient within 1.5x
    torch's bfloat16 error against float64 on the same bfloat16 weights and input."""
    num_layers, bidir, batch_first, packed = config
    theirs = make(cell, num_layers, bidir, batch_first).to(BF16)
    ours = rt.convert(copy.deepcopy(theirs))
    exact = copy.deepcopy(theirs).double()  # the bfloat16 values, in float64
    T, B = 30, 4
    shape = (B, T, 24) if batch_first else (T, B, 24)
    x = torch.randn(shape).to(BF16)
    gy_shape = (*shape[:2], (2 if bidir else 1) * 32)
    gy = torch.randn(gy_shape).to(BF16)
    y64, g64 = run(exact, x.double(), packed, gy.double())
    yt, gt = run(theirs, x, packed, gy)
    yo, go = run(ours, x, packed, gy)
    with torch.no_grad():
        out = ours(x if not packed else pack_padded_sequence(
            x, torch.tensor(LENGTHS), batch_first=batch_first, enforce_sorted=False))
    states = out[1] if cell != "lstm" else out[1][0]
    data = out[0].data if packed else out[0]
    assert data.dtype == states.dtype == BF16
    assert all(p.grad is not None and p.grad.dtype == BF16 for p in ours.parameters())
    assert rel_err(yo, y64) <= 1.5 * rel_err(yt, y64), (rel_err(yo, y64), rel_err(yt, y64))
    for name, g in g64.items():
        assert rel_err(go[name], g) <= 1.5 * rel_err(gt[name], g), (
            name, rel_err(go[name], g), rel_err(gt[name], g))


def torch_autocast_dtypes(module: torch.nn.Module, x: torch.Tensor, packed: bool
                          ) -> list[torch.dtype]:
    """The dtypes of (output, h_n[, c_n]) of torch's own module under CPU autocast to bfloat16:
    run, or where torch cannot run it on this CPU (oneDNN's bfloat16 LSTM needs AVX-512) traced
    with fake tensors, which take the same dispatch."""
    def dtypes(m: torch.nn.Module, inp: Any) -> list[torch.dtype]:
        with torch.autocast("cpu", dtype=BF16):
            out, state = m(inp)
        data = out.data if isinstance(out, PackedSequence) else out
        return [data.dtype, *(s.dtype for s in (state if isinstance(state, tuple) else (state,)))]

    inp: Any = pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False) if packed else x
    warnings.filterwarnings("ignore", "LSTM with projections is not supported with oneDNN")
    try:
        return dtypes(module, inp)
    except RuntimeError as e:
        assert not packed and "primitive descriptor" in str(e), e
        with FakeTensorMode(allow_non_fake_inputs=True):
            return dtypes(copy.deepcopy(module), torch.empty(x.shape, dtype=x.dtype))


@pytest.mark.parametrize("packed", [False, True], ids=["tensor", "packed"])
@pytest.mark.parametrize("cell,proj", [("lstm", 0), ("lstm", 8), ("gru", 0), ("rnn", 0)],
                         ids=["lstm", "lstm-proj", "gru", "rnn"])
def test_autocast_gives_torchs_dtypes_and_the_bf16_paths_bits(cell: str, proj: int,
                                                              packed: bool) -> None:
    """Under CPU autocast a float32 drop-in returns the dtypes torch's module returns there, the
    bf16 path's values (those of convert(precision="bf16")), and float32 gradients."""
    torch.manual_seed(1)
    kw = {"proj_size": proj} if proj else {}
    theirs = TORCH_CLASSES[cell](12, 16, num_layers=2, bidirectional=True, **kw)
    x = torch.randn(30, 4, 12)
    for xdtype in (torch.float32, BF16):
        xx = x.to(xdtype)
        want = torch_autocast_dtypes(theirs, xx, packed)
        ours = rt.convert(copy.deepcopy(theirs))
        bf16 = rt.convert(copy.deepcopy(theirs), precision="bf16")
        inp: Any = (pack_padded_sequence(xx, torch.tensor(LENGTHS), enforce_sorted=False)
                    if packed else xx)
        with torch.autocast("cpu", dtype=BF16):
            out, state = ours(inp)
        states = state if isinstance(state, tuple) else (state,)
        data = out.data if packed else out
        assert [data.dtype, *(s.dtype for s in states)] == want, xdtype
        ref_inp: Any = (pack_padded_sequence(x.to(xdtype).float(), torch.tensor(LENGTHS),
                                             enforce_sorted=False) if packed else xx.float())
        ref_out, ref_state = bf16(ref_inp)
        ref_data = ref_out.data if packed else ref_out
        assert torch.equal(data, ref_data.to(data.dtype))
        ref_states = ref_state if isinstance(ref_state, tuple) else (ref_state,)
        for s, r in zip(states, ref_states):
            assert torch.equal(s, r.to(s.dtype))
        # gradients: float32 for the float32 parameters, those of the bf16 path
        gy = torch.randn(data.shape)
        data.backward(gy.to(data.dtype))
        ref_data.backward(gy.to(data.dtype).float())
        for (name, p), q in zip(ours.named_parameters(), bf16.parameters()):
            assert p.grad is not None and p.grad.dtype == torch.float32, name
            assert torch.equal(p.grad, q.grad), name  # type: ignore[arg-type]


def test_autocast_on_float64_and_off_changes_nothing() -> None:
    theirs = make("lstm", 1, False, False)
    ours = rt.convert(copy.deepcopy(theirs))
    x = torch.randn(10, 2, 24)
    with torch.autocast("cpu", dtype=BF16, enabled=False):
        assert torch.equal(ours(x)[0], rt.convert(copy.deepcopy(theirs))(x)[0])
    ours64 = copy.deepcopy(ours).double()
    with torch.autocast("cpu", dtype=BF16):
        y = ours64(x.double())[0]
    assert y.dtype == torch.float64
    assert torch.equal(y, ours64(x.double())[0])


def test_mixing_dtypes_raises_like_torch() -> None:
    """An input whose dtype is not the weights' raises torch's own ValueError; bfloat16 and a
    float32 state raise TypeError naming the state."""
    theirs = make("lstm", 1, False, False)
    ours = rt.convert(copy.deepcopy(theirs))
    x = torch.randn(5, 2, 24)
    for module, inp in [(theirs.to(BF16), x), (torch.nn.LSTM(24, 32), x.to(BF16))]:
        drop_in = rt.convert(copy.deepcopy(module))
        with pytest.raises(ValueError) as want:
            module(inp)
        with pytest.raises(ValueError, match="input dtype") as got:
            drop_in(inp)
        assert str(got.value) == str(want.value)
    ours.to(BF16)
    h = torch.zeros(1, 2, 32)
    with pytest.raises(TypeError, match="h_0: dtype torch.float32 does not match the input's "
                                        "dtype torch.bfloat16"):
        ours(x.to(BF16), (h, h.to(BF16)))
    with pytest.raises(TypeError, match="precision 'int8' takes float32 parameters"):
        rt.convert(copy.deepcopy(ours), precision="int8")
    with pytest.raises(ValueError, match="precision: expected one of"):
        rt.convert(torch.nn.GRU(3, 4), precision="fp8")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_convert_bf16_and_int8_run_the_functional_paths(cell: str) -> None:
    """convert(model, precision=...) on one layer: the bits of rnnkern.{cell}_forward with that
    precision, float32 results; bf16 trains (float32 gradients of the bf16 backward)."""
    theirs = make(cell, 1, False, False)
    x = torch.randn(20, 3, 24)
    ws = [p.detach().numpy() for p in theirs.parameters()]
    f = getattr(rnnkern, f"{cell}_forward")
    states: tuple[None, ...] = (None, None) if cell == "lstm" else (None,)
    for precision in ("bf16", "int8"):
        ours = rt.convert(copy.deepcopy(theirs), precision=precision)
        with torch.no_grad():
            y = ours(x)[0]
        want = f(x.numpy(), *states, *ws, training=False, precision=precision).y
        assert y.dtype == torch.float32
        np.testing.assert_array_equal(y.numpy(), want)
    ours = rt.convert(copy.deepcopy(theirs), precision="bf16")
    out = f(x.numpy(), *states, *ws, precision="bf16")
    gy = torch.randn(20, 3, 32)
    ours(x)[0].backward(gy)
    g = getattr(rnnkern, f"{cell}_backward")(out.cache, gy.numpy())
    np.testing.assert_array_equal(ours.weight_hh_l0.grad.numpy(), g.dw_hh)  # type: ignore[union-attr]


def test_int8_within_onnxruntimes_error() -> None:
    """convert(model, precision="int8"): LSTM y's error against float64 at most 1.5x ONNX
    Runtime's int8 (quantize_dynamic) on the same weights and input."""
    x, ws = lstm_case(40, 4, 64, 64, seed=0)
    theirs = torch.nn.LSTM(64, 64)
    with torch.no_grad():
        for p, w in zip(theirs.parameters(), ws):
            p.copy_(torch.from_numpy(w))
    ours = rt.convert(copy.deepcopy(theirs), precision="int8").eval()
    with torch.inference_mode():
        yq = ours(torch.from_numpy(x))[0].numpy()
        y64 = theirs.double()(torch.from_numpy(x).double())[0].numpy()
    yo = ort_int8_lstm(x, ws)
    assert rel_err(yq, y64) <= 1.5 * rel_err(yo, y64), (rel_err(yq, y64), rel_err(yo, y64))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_int8_stack_and_its_errors(cell: str) -> None:
    """A 2-layer bidirectional packed int8 model within int8's documented bound of float64; a
    call that would record gradients raises ValueError naming precision, for layers and cells."""
    theirs = make(cell, 2, True, False, H=64, I=64)
    ours = rt.convert(torch.nn.Sequential(copy.deepcopy(theirs)), precision="int8")
    x = torch.randn(30, 4, 64)
    with torch.no_grad():
        yq, _ = run(ours[0], x, packed=True)
    y64, _ = run(copy.deepcopy(theirs).double(), x.double(), packed=True)
    assert rel_err(yq, y64) <= 2 * INT8_ERROR  # each of the 2 layers adds int8's error
    with pytest.raises(ValueError, match="precision: 'int8' is inference only"):
        ours(x)
    cell_module = rt.convert(getattr(torch.nn, f"{cell.upper()}Cell")(5, 7), precision="int8")
    with pytest.raises(ValueError, match="precision: 'int8' is inference only"):
        cell_module(torch.randn(2, 5))
    with torch.no_grad():
        h = cell_module(torch.randn(2, 5))
    assert (h[0] if isinstance(h, tuple) else h).shape == (2, 7)


@pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning")
def test_int8_projection_stack() -> None:
    """convert(model, precision="int8") keeps proj_size: one layer gives the bits of
    rnnkern.lstm_forward(w_hr=..., precision="int8"); a packed 2-layer bidirectional model stays
    within two layers' int8 error of float64."""
    torch.manual_seed(0)
    one = torch.nn.LSTM(24, 32, proj_size=8)
    ws = [p.detach().numpy() for p in one.parameters()]  # w_ih, w_hh, b_ih, b_hh, w_hr
    x = torch.randn(20, 3, 24)
    with torch.no_grad():
        y = rt.convert(copy.deepcopy(one), precision="int8")(x)[0]
    want = rnnkern.lstm_forward(x.numpy(), None, None, *ws[:4], w_hr=ws[4], training=False,
                                precision="int8").y
    assert y.shape == (20, 3, 8)
    np.testing.assert_array_equal(y.numpy(), want)
    theirs = torch.nn.LSTM(64, 64, num_layers=2, bidirectional=True, proj_size=32)
    ours = rt.convert(torch.nn.Sequential(copy.deepcopy(theirs)), precision="int8")
    x = torch.randn(30, 4, 64)
    with torch.no_grad():
        yq, _ = run(ours[0], x, packed=True)
    y64, _ = run(copy.deepcopy(theirs).double(), x.double(), packed=True)
    assert yq.shape == (30, 4, 64)
    assert 2.0**-12 < rel_err(yq, y64) <= 2 * INT8_ERROR
