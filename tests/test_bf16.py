"""precision="bf16": products of bf16-rounded operands summed in float32 (docs/precision.md).

What "equal" means here (docs/tolerances.md): the kernels round exactly the operands the
reference rounds (weights; x, h_{t-1}, gru_rh's r*h; in the backward the dgates, x, h_{t-1}), so
they differ only by the float32 summation order, and through it by an operand that rounds to the
neighbouring bf16 value: every result within 2^-7 (two bf16 ulps) of the largest magnitude of
the reference's. Against float64, rnnkern's bf16 y must be within 1.5x torch bf16's own error on
the same weights (issue 14).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from rnnkern_testing import CELLS, NATIVE_LOWP, assert_close_bf16, make_case, make_output_grads

import rnnkern
from rnnkern import _api, reference

SHAPES = [  # (T, B, I, H, lengths): odd H (partial blocks), T = 1, B = 1, lengths
    (9, 3, 13, 21, None),
    (1, 1, 5, 7, None),
    (12, 4, 8, 17, "random"),
    (40, 2, 24, 40, None),
    (3, 5, 1101, 530, "random"),  # long products: AVX512_BF16 packs a's pairs 512 k at a time
]


@pytest.mark.parametrize("cell,kw", CELLS, ids=lambda v: str(v))
@pytest.mark.parametrize("T,B,I,H,lengths", SHAPES)
def test_kernels_equal_the_reference(isa: str, cell: str, kw: dict[str, Any], T: int, B: int,
                                     I: int, H: int, lengths: Any) -> None:
    case = make_case(cell, T=T, B=B, I=I, H=H, dtype=np.float32, seed=T * H, lengths=lengths)
    f, fr = getattr(rnnkern, f"{cell}_forward"), getattr(reference, f"{cell}_forward")
    got = f(**case, **kw, precision="bf16")
    want = fr(**case, **kw, precision="bf16")
    for name, a, b in zip(got._fields[:-1], got[:-1], want[:-1]):
        assert_close_bf16(a, b, name)
    assert got.cache.precision == "bf16"
    grads = make_output_grads(cell, T, B, H, np.float32)
    g = getattr(rnnkern, f"{cell}_backward")(got.cache, **grads)
    gw = getattr(reference, f"{cell}_backward")(want.cache, **grads)
    for name, a, b in zip(g._fields, g, gw):
        if b is None:
            assert a is None, name
        else:
            assert_close_bf16(a, b, name)


@pytest.mark.parametrize("cell,kw", CELLS[3:5], ids=["lstm", "gru"])
def test_bf16_is_not_float32(cell: str, kw: dict[str, Any]) -> None:
    """The rounding happens: bf16 results differ from float32's by about bf16's precision, and a
    packed bf16 pack gives the same bits as the per-call path."""
    case = make_case(cell, T=20, B=2, I=32, H=32, dtype=np.float32, seed=1)
    f = getattr(rnnkern, f"{cell}_forward")
    y32, yb = f(**case, **kw, training=False).y, f(**case, **kw, training=False, precision="bf16").y
    diff = np.abs(y32 - yb).max() / np.abs(y32).max()
    assert 2.0**-14 < diff < 2.0**-5, diff
    pack = getattr(rnnkern, f"{cell}_pack")(case["w_ih"], case["w_hh"], case["b_ih"],
                                            case["b_hh"], precision="bf16", **kw)
    assert pack.precision == "bf16" and "bf16" in repr(pack)
    np.testing.assert_array_equal(pack.forward(case["x"], case["h0"], case.get("c0"),
                                               training=False).y, yb)


@pytest.mark.parametrize("T,B,I,H,lengths", SHAPES[:3])
def test_peepholes_in_bf16_equal_the_reference(isa: str, T: int, B: int, I: int, H: int,
                                               lengths: Any) -> None:
    case = make_case("lstm", T=T, B=B, I=I, H=H, dtype=np.float32, seed=H, lengths=lengths)
    peep = np.random.default_rng(H).uniform(-0.5, 0.5, (3, H)).astype(np.float32)  # (3, H)
    got = rnnkern.lstm_forward(**case, w_peep=peep, precision="bf16")
    want = reference.lstm_forward(**case, w_peep=peep, precision="bf16")
    assert_close_bf16(got.y, want.y, "y")
    grads = make_output_grads("lstm", T, B, H, np.float32)
    g = rnnkern.lstm_backward(got.cache, **grads)
    gw = reference.lstm_backward(want.cache, **grads)
    assert len(g) == len(gw) == 8  # the seven, then dw_peep
    for name, a, b in zip(g._fields, g, gw):
        if b is not None:
            assert_close_bf16(a, b, name)


def test_round_bf16_ties_to_even_and_specials() -> None:
    one = np.float32(1.0)
    ulp = np.float32(2.0**-7)  # bf16's spacing at 1
    a = np.array([one + ulp / 2, one + 3 * ulp / 2, one + ulp / 4, -(one + ulp * 0.75),
                  np.inf, -np.inf, np.nan, np.finfo(np.float32).max, 0.0, -0.0], dtype=np.float32)
    r = _api.round_bf16(a)
    assert r[0] == one  # tie: to even
    assert r[1] == one + 2 * ulp  # tie: to even (up)
    assert r[2] == one
    assert r[3] == -(one + ulp)
    assert r[4] == np.inf and r[5] == -np.inf and np.isnan(r[6])
    assert r[7] == np.inf  # above bf16's largest finite: rounds to inf
    assert r[8] == 0 and np.signbit(r[9])


def test_nan_propagates(isa: str) -> None:
    case = make_case("lstm", T=3, B=2, I=4, H=8, dtype=np.float32)
    case["x"][1, 0, 0] = np.nan
    y = rnnkern.lstm_forward(**case, precision="bf16").y
    assert np.isnan(y[1:, 0]).all() and np.isfinite(y[:, 1]).all()


def test_bad_precision_errors() -> None:
    case = make_case("gru", T=2, B=1, I=3, H=4, dtype=np.float32)
    with pytest.raises(ValueError, match="precision: expected one of 'float', 'bf16', 'int8'"):
        rnnkern.gru_forward(**case, precision="fp8")
    with pytest.raises(TypeError, match="precision: expected a str"):
        rnnkern.gru_forward(**case, precision=16)  # type: ignore[arg-type]
    case64 = make_case("gru", T=2, B=1, I=3, H=4, dtype=np.float64)
    for f in (rnnkern.gru_forward, reference.gru_forward):
        with pytest.raises(TypeError, match="precision: 'bf16' takes float32 arrays, got dtype "
                                            "float64"):
            f(**case64, precision="bf16")
    with pytest.raises(TypeError, match="float64"):
        rnnkern.gru_pack(case64["w_ih"], case64["w_hh"], None, None, precision="bf16")


def test_config_names_each_precisions_path() -> None:
    paths = rnnkern.config()["precisions"]
    assert set(paths) == set(_api.PRECISIONS)
    in_use = rnnkern.config()["isa"]
    if in_use == "avx512" and NATIVE_LOWP:
        assert paths["bf16"].startswith("avx512 AVX512_BF16 vdpbf16ps")
    else:
        assert paths["bf16"].startswith(("scalar" if in_use == "scalar" else "avx2") + " emulated")


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_error_within_torch_bf16s(cell: str) -> None:
    """y's error against float64 at most 1.5x torch bf16's on the same weights and input."""
    import torch  # a peer: missing fails, never skips
    torch.manual_seed(0)
    T, B, I, H = 60, 4, 64, 64
    m = getattr(torch.nn, cell)(I, H)
    x = torch.randn(T, B, I)
    ws = [p.detach().numpy() for p in (m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0,
                                       m.bias_hh_l0)]
    name = cell.lower()
    states: tuple[None, ...] = (None, None) if name == "lstm" else (None,)
    y64 = getattr(reference, f"{name}_forward")(
        x.numpy().astype(np.float64), *states, *(w.astype(np.float64) for w in ws),
        training=False).y
    yb = getattr(rnnkern, f"{name}_forward")(x.numpy(), *states, *ws, training=False,
                                             precision="bf16").y
    with torch.no_grad():
        yt = m.to(torch.bfloat16)(x.to(torch.bfloat16))[0].float().numpy()
    scale = np.abs(y64).max()
    ours, theirs = np.abs(yb - y64).max() / scale, np.abs(yt - y64).max() / scale
    assert ours <= 1.5 * theirs, (ours, theirs)


@pytest.mark.parametrize("cell,kw", CELLS, ids=lambda v: str(v))
def test_layers_take_precision(cell: str, kw: dict[str, Any]) -> None:
    """rnnkern.nn layers with precision="bf16": the same bits as the functional call in bf16,
    forward (y, the final state) and backward (dx, every parameter's gradient)."""
    layer_cls = {"rnn": rnnkern.nn.RNN, "lstm": rnnkern.nn.LSTM, "gru": rnnkern.nn.GRU}[cell]
    layer = layer_cls(6, 10, seed=3, precision="bf16", **kw)
    assert "precision='bf16'" in repr(layer)
    x = np.random.default_rng(4).standard_normal((5, 3, 6)).astype(np.float32)
    out = layer(x)
    w = [layer.params.get(n) for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    fwd = getattr(rnnkern, f"{cell}_forward")
    states = (None, None) if cell == "lstm" else (None,)
    want = fwd(x, *states, *w, precision="bf16", **kw)
    np.testing.assert_array_equal(out[0], want.y)
    dy = np.random.default_rng(5).standard_normal(want.y.shape).astype(np.float32)
    layer.zero_grad()
    dx = layer.backward(dy)
    g = getattr(rnnkern, f"{cell}_backward")(want.cache, dy)
    np.testing.assert_array_equal(dx[0] if isinstance(dx, tuple) else dx, g.dx)
    np.testing.assert_array_equal(layer.grads["weight_hh_l0"], g.dw_hh)
    np.testing.assert_array_equal(layer.grads["weight_ih_l0"], g.dw_ih)
    with pytest.raises(TypeError, match="precision: 'bf16' takes float32"):
        layer_cls(6, 10, dtype=np.float64, precision="bf16", **kw)
    with pytest.raises(ValueError, match="precision: expected one of"):
        layer_cls(6, 10, precision="fp8", **kw)
