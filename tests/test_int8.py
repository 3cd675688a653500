"""precision="int8" (inference): int8 weight rows times u8 activation rows, exact int32 sums
(docs/precision.md, "int8").

What "equal" means here (docs/tolerances.md, "int8"): the reference quantizes exactly the
operands the kernels quantize, with the same float32 operations (_api.round_int8), so kernel and
reference differ by float32 rounding (of the reference's sums and of the epilogue), and through it
by an activation that lands on the neighbouring u8 value now and then: every result within
2^-7 of the largest magnitude of the reference's. Against float64, rnnkern's int8 y must be
within 1.5x ONNX Runtime's own int8 error (quantize_dynamic) on the same LSTM.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rnnkern_testing import (
    CELLS,
    ISAS,
    NATIVE_LOWP,
    assert_close_int8,
    make_case,
    make_lstm_variant_case,
)
from test_bf16 import SHAPES as BF16_SHAPES

import rnnkern
from rnnkern import _api, _functional, reference

# (T, B, I, H, lengths): odd H and I (partial blocks, K not a multiple of 4), T = 1, B = 1,
# lengths; B = 11: tiles of every row count
SHAPES = [*BF16_SHAPES[:3], (30, 11, 24, 40, None)]


def run(f: Any, case: dict[str, Any], kw: dict[str, Any]) -> Any:
    return f(**case, **kw, training=False, precision="int8")


def assert_equals_reference(got: Any, want: Any, lengths: Any) -> None:
    """An int8 forward's results (but the cache) within assert_close_int8 of the int8
    reference's, and y exactly zero at padded steps."""
    for name, a, b in zip(got._fields[:-1], got[:-1], want[:-1]):
        assert_close_int8(a, b, name)
    assert got.cache is None
    if lengths is not None:
        pad = np.arange(got.y.shape[0])[:, None] >= lengths[None, :]  # (T, B)
        assert (got.y[pad] == 0).all()


def assert_same_bits_on_threads(call: Any) -> None:
    """call() (a forward) gives the same bits on 1, 2 and 3 threads (but the cache)."""
    before = rnnkern.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            rnnkern.set_num_threads(n)
            outs.append(call())
    finally:
        rnnkern.set_num_threads(before)
    for out in outs[1:]:
        for a, b in zip(out[:-1], outs[0][:-1]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell,kw", CELLS, ids=lambda v: str(v))
@pytest.mark.parametrize("T,B,I,H,lengths", SHAPES)
def test_kernels_equal_the_reference(isa: str, cell: str, kw: dict[str, Any], T: int, B: int,
                                     I: int, H: int, lengths: Any) -> None:
    case = make_case(cell, T=T, B=B, I=I, H=H, dtype=np.float32, seed=T * H, lengths=lengths)
    got = run(getattr(rnnkern, f"{cell}_forward"), case, kw)
    want = run(getattr(reference, f"{cell}_forward"), case, kw)
    assert_equals_reference(got, want, case["lengths"])


@pytest.mark.parametrize("cell,kw", CELLS[3:5], ids=["lstm", "gru"])
def test_int8_is_not_float32_and_packs_give_the_same_bits(cell: str, kw: dict[str, Any]) -> None:
    """The quantization happens (int8 differs from float32 by about its resolution), and a
    packed int8 pack gives the same bits as the per-call path."""
    case = make_case(cell, T=20, B=2, I=32, H=32, dtype=np.float32, seed=1)
    f = getattr(rnnkern, f"{cell}_forward")
    y32, yq = f(**case, **kw, training=False).y, run(f, case, kw).y
    diff = np.abs(y32 - yq).max() / np.abs(y32).max()
    assert 2.0**-12 < diff < 2.0**-4, diff
    pack = getattr(rnnkern, f"{cell}_pack")(case["w_ih"], case["w_hh"], case["b_ih"],
                                            case["b_hh"], precision="int8", **kw)
    assert pack.precision == "int8" and "int8" in repr(pack)
    np.testing.assert_array_equal(pack.forward(case["x"], case["h0"], case.get("c0"),
                                               training=False).y, yq)
    rpack = getattr(reference, f"{cell}_pack")(case["w_ih"], case["w_hh"], case["b_ih"],
                                               case["b_hh"], precision="int8", **kw)
    assert_close_int8(pack.forward(case["x"], case["h0"], case.get("c0"), training=False).y,
                      rpack.forward(case["x"], case["h0"], case.get("c0"), training=False).y)


@pytest.mark.parametrize("cell,kw", [CELLS[0], CELLS[3], CELLS[4], CELLS[5]],
                         ids=["rnn", "lstm", "gru", "gru_rh"])
def test_results_do_not_depend_on_the_thread_count(cell: str, kw: dict[str, Any]) -> None:
    """Each thread quantizes the whole h_{t-1} (and x) with the same operations: the bits are
    those of one thread."""
    case = make_case(cell, T=12, B=8, I=48, H=72, dtype=np.float32, seed=5, lengths="random")
    assert_same_bits_on_threads(lambda: run(getattr(rnnkern, f"{cell}_forward"), case, kw))


@pytest.mark.parametrize("cell,kw", [CELLS[0], CELLS[3], CELLS[4], CELLS[5]],
                         ids=["rnn", "lstm", "gru", "gru_rh"])
def test_chunks_of_steps_do_not_change_the_bits(isa: str, cell: str, kw: dict[str, Any]) -> None:
    """The int8 forward projects x in chunks of about 64 rows (8 steps at B = 8): the bits are
    those of one call per step (every row's quantization and sums are its own)."""
    case = make_case(cell, T=21, B=8, I=40, H=24, dtype=np.float32, seed=3)
    pack = getattr(rnnkern, f"{cell}_pack")(case["w_ih"], case["w_hh"], case["b_ih"],
                                            case["b_hh"], precision="int8", **kw)
    whole = pack.forward(case["x"], case["h0"], case.get("c0"), training=False)
    h, c, ys = case["h0"], case.get("c0"), []
    for t in range(21):
        out = pack.forward(case["x"][t:t + 1], h, c, training=False)
        h, c = out.h_n, getattr(out, "c_n", None)
        ys.append(out.y)
    np.testing.assert_array_equal(whole.y, np.concatenate(ys))
    np.testing.assert_array_equal(whole.h_n, h)


#: The ISAs with vector kernels that this CPU runs.
VECTOR_ISAS = [name for name in ISAS if name != "scalar"]


@pytest.mark.parametrize("cell,kw", [CELLS[0], CELLS[3], CELLS[4], CELLS[5]],
                         ids=["rnn", "lstm", "gru", "gru_rh"])
@pytest.mark.skipif(len(VECTOR_ISAS) < 2, reason="one vector ISA only")
def test_the_same_bits_on_every_vector_isa(cell: str, kw: dict[str, Any]) -> None:
    """The int8 sums are exact on every path (avx2 vpmaddubsw + vpmaddwd; avx512 AVX512_VNNI
    vpdpbusd, or vpmaddubsw on avx2's kernels without it) and the rest is lane by lane with the
    same formulas at any width, so the vector ISAs give the same bits. (The scalar kernels' math
    functions differ in the last bit: they are held to the reference.) Odd sizes (partial groups
    of 4 k, partial blocks), lengths, peepholes (lstm)."""
    case = make_case(cell, T=13, B=7, I=37, H=45, dtype=np.float32, seed=9, lengths="random")
    if cell == "lstm":
        rng = np.random.default_rng(9)
        kw = {**kw, "w_peep": rng.uniform(-0.5, 0.5, (3, 45)).astype(np.float32)}
    f = getattr(rnnkern, f"{cell}_forward")
    before = rnnkern.config()["isa"]
    try:
        outs = {}
        for name in VECTOR_ISAS:
            rnnkern.set_isa(name)
            outs[name] = f(**case, **kw, training=False, precision="int8")
    finally:
        rnnkern.set_isa(before)
    first = VECTOR_ISAS[0]
    for name in VECTOR_ISAS[1:]:
        for field, a, b in zip(outs[name]._fields[:-1], outs[name][:-1], outs[first][:-1]):
            assert (a is None) == (b is None), field
            if a is not None:
                np.testing.assert_array_equal(a, b, err_msg=f"{name} {field}")


def test_peepholes_in_int8_equal_the_reference(isa: str) -> None:
    case = make_case("lstm", T=9, B=3, I=13, H=21, dtype=np.float32, seed=2, lengths="random")
    peep = np.random.default_rng(2).uniform(-0.5, 0.5, (3, 21)).astype(np.float32)  # (3, H)
    got = rnnkern.lstm_forward(**case, w_peep=peep, training=False, precision="int8")
    want = reference.lstm_forward(**case, w_peep=peep, training=False, precision="int8")
    assert_equals_reference(got, want, case["lengths"])


@pytest.mark.parametrize("T,B,I,H,lengths", SHAPES)
def test_projection_in_int8_equals_the_reference(isa: str, T: int, B: int, I: int, H: int,
                                                 lengths: Any) -> None:
    """A projection's h_t = W_hr m_t is a third int8 product (W_hr's rows 7-bit, m_t's rows u8),
    as the reference rounds it; P odd and even, padded steps exactly zero."""
    case = make_lstm_variant_case("proj", T, B, I, H, np.float32, seed=T + H, lengths=lengths)
    got = rnnkern.lstm_forward(**case, training=False, precision="int8")
    want = reference.lstm_forward(**case, training=False, precision="int8")
    assert_equals_reference(got, want, case["lengths"])


def test_projection_with_peepholes_in_int8_equals_the_reference(isa: str) -> None:
    case = make_lstm_variant_case("proj", 9, 3, 13, 21, np.float32, P=7, seed=4,
                                  lengths="random")
    peep = np.random.default_rng(2).uniform(-0.5, 0.5, (3, 21)).astype(np.float32)  # (3, H)
    got = rnnkern.lstm_forward(**case, w_peep=peep, training=False, precision="int8")
    want = reference.lstm_forward(**case, w_peep=peep, training=False, precision="int8")
    assert got.y.shape == (9, 3, 7)
    assert_equals_reference(got, want, case["lengths"])


def test_projection_bits_do_not_depend_on_threads_or_chunks() -> None:
    """Each thread quantizes the whole m_t rows itself, so 1, 2 and 3 threads give the same
    bits, and so does a pack run one step per call."""
    case = make_lstm_variant_case("proj", 21, 8, 40, 72, np.float32, seed=6, lengths="random")
    assert_same_bits_on_threads(
        lambda: rnnkern.lstm_forward(**case, training=False, precision="int8"))
    pack = rnnkern.lstm_pack(case["w_ih"], case["w_hh"], case["b_ih"], case["b_hh"],
                             precision="int8", w_hr=case["w_hr"])
    full = make_lstm_variant_case("proj", 21, 8, 40, 72, np.float32, seed=6)  # no lengths
    whole = pack.forward(full["x"], full["h0"], full["c0"], training=False)
    h, c, ys = full["h0"], full["c0"], []
    for t in range(21):
        out = pack.forward(full["x"][t:t + 1], h, c, training=False)
        h, c = out.h_n, out.c_n
        ys.append(out.y)
    np.testing.assert_array_equal(whole.y, np.concatenate(ys))
    np.testing.assert_array_equal(whole.c_n, c)


def test_round_int8() -> None:
    """The reference's quantization: weights symmetric in [-63, 63] per row, activations u8 with
    a zero point per row, ties to even; zero rows stay zero, non-finite rows become NaN."""
    w = np.array([[0.5, -1.0, 0.25, 1.0 / 126], [0.0] * 4, [1.0, np.nan, 0.0, 0.0]], np.float32)
    r = _api.round_int8(w, weight=True)
    step = np.float32(1.0) / 63
    np.testing.assert_array_equal(r[0], np.float32([32, -63, 16, 0]) * step)  # 31.5 -> 32,
    assert (r[1] == 0).all() and np.isnan(r[2]).all()                          # 0.5 -> 0
    a = np.array([[-1.0, 0.0, 1.0, 0.5], [2.0, 3.0, 2.0, 1.0], [0.0] * 4,
                  [np.inf, 0.0, 0.0, 0.0]], np.float32)
    q = _api.round_int8(a)
    s0 = np.float32(2.0) / 255  # range [-1, 1]: zero point 128 (127.5 to even), 0 exact
    np.testing.assert_array_equal(q[0, 1], 0)
    assert np.abs(q[0] - a[0]).max() <= s0 / 2 * 1.0001
    s1 = np.float32(3.0) / 255  # range [0, 3]: zero point 0
    assert np.abs(q[1] - a[1]).max() <= s1 / 2 * 1.0001
    assert (q[2] == 0).all() and np.isnan(q[3]).all()
    # every value is a level of its row: (q - zp) * scale with q in 0..255
    levels = np.rint(q[1] / s1)
    np.testing.assert_array_equal(levels * s1, q[1])


def test_nan_propagates(isa: str) -> None:
    """A NaN in x makes its row's products NaN (its scale is NaN), and only that row's."""
    case = make_case("lstm", T=3, B=2, I=4, H=8, dtype=np.float32)
    case["x"][1, 0, 0] = np.nan
    y = rnnkern.lstm_forward(**case, training=False, precision="int8").y
    assert np.isnan(y[1:, 0]).all() and np.isfinite(y[:, 1]).all() and np.isfinite(y[0]).all()


def test_bad_use_errors() -> None:
    case = make_case("gru", T=2, B=1, I=3, H=4, dtype=np.float32)
    for f in (rnnkern.gru_forward, reference.gru_forward):
        with pytest.raises(ValueError, match="precision: 'int8' is inference only"):
            f(**case, precision="int8")  # training=True by default
    for pack_f in (rnnkern.gru_pack, reference.gru_pack):
        pack = pack_f(case["w_ih"], case["w_hh"], None, None, precision="int8")
        with pytest.raises(ValueError, match="precision: 'int8' is inference only"):
            pack.forward(case["x"])
    pack = rnnkern.gru_pack(case["w_ih"], case["w_hh"], None, None, precision="int8")
    with pytest.raises(ValueError, match="precision: 'int8' is inference only"):
        _functional.forward_many([(pack, case["x"], None, None, None)], training=True)
    out = _functional.forward_many([(pack, case["x"], None, None, None)], training=False)
    assert out[0].cache is None
    case64 = make_case("gru", T=2, B=1, I=3, H=4, dtype=np.float64)
    for f in (rnnkern.gru_forward, reference.gru_forward):
        with pytest.raises(TypeError, match="precision: 'int8' takes float32 arrays, got dtype "
                                            "float64"):
            f(**case64, training=False, precision="int8")
    with pytest.raises(TypeError, match="float64"):
        rnnkern.gru_pack(case64["w_ih"], case64["w_hh"], None, None, precision="int8")


def test_config_names_the_int8_path() -> None:
    paths = rnnkern.config()["precisions"]
    assert set(paths) == set(_api.PRECISIONS)
    in_use = rnnkern.config()["isa"]
    if in_use == "avx512" and NATIVE_LOWP:
        assert paths["int8"].startswith("avx512 AVX512_VNNI vpdpbusd")
    else:
        assert paths["int8"].startswith("scalar" if in_use == "scalar" else "avx2")
    assert "inference only" in paths["int8"]


def lstm_case(T: int, B: int, I: int, H: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """x ~ N(0, 1) (T, B, I) and an LSTM's w_ih, w_hh, b_ih, b_hh in torch's initialization."""
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)
    ws = [rng.uniform(-k, k, s).astype(np.float32)
          for s in ((4 * H, I), (4 * H, H), (4 * H,), (4 * H,))]
    return rng.standard_normal((T, B, I)).astype(np.float32), ws


def ort_int8_lstm(x: np.ndarray, ws: list[np.ndarray]) -> np.ndarray:
    """ONNX Runtime's int8 LSTM (quantize_dynamic: DynamicQuantizeLSTM) on the same weights:
    y (T, B, H)."""
    import onnx  # peers: missing fails, never skips
    import onnxruntime as ort
    from onnx import helper, numpy_helper
    from onnxruntime.quantization import quantize_dynamic
    T, B, I = x.shape
    H = ws[1].shape[1]

    def gates(a: np.ndarray) -> np.ndarray:  # PyTorch's blocks i, f, g, o -> ONNX's i, o, f, c
        return np.concatenate([a[k * H:(k + 1) * H] for k in (0, 3, 1, 2)])

    inits = [numpy_helper.from_array(gates(ws[0])[None], "W"),
             numpy_helper.from_array(gates(ws[1])[None], "R"),
             numpy_helper.from_array(np.concatenate([gates(ws[2]), gates(ws[3])])[None], "B")]
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], hidden_size=H)
    f32 = onnx.TensorProto.FLOAT
    graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("X", f32, x.shape)],
                              [helper.make_tensor_value_info("Y", f32, (T, 1, B, H))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "lstm_int8.onnx"
        quantize_dynamic(model, path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        y: np.ndarray = session.run(None, {"X": x})[0][:, 0]
    return y


def test_error_within_onnxruntimes_int8() -> None:
    """LSTM y's error against float64 (max |y - y64| / max |y64|) at most 1.5x ONNX Runtime's
    int8 error on the same weights and input."""
    x, ws = lstm_case(40, 4, 64, 64, seed=0)
    y64 = reference.lstm_forward(x.astype(np.float64), None, None,
                                 *(w.astype(np.float64) for w in ws), training=False).y
    yq = rnnkern.lstm_forward(x, None, None, *ws, training=False, precision="int8").y
    yo = ort_int8_lstm(x, ws)
    scale = np.abs(y64).max()
    ours, theirs = np.abs(yq - y64).max() / scale, np.abs(yo - y64).max() / scale
    assert ours <= 1.5 * theirs, (ours, theirs)


@pytest.mark.parametrize("cell,kw", CELLS, ids=lambda v: str(v))
def test_error_against_float64(cell: str, kw: dict[str, Any]) -> None:
    """Every cell's int8 y within INT8_ERROR of the float64 answer (relative to max |y64|)."""
    case = make_case(cell, T=30, B=4, I=64, H=64, dtype=np.float32, seed=3)
    y64 = getattr(reference, f"{cell}_forward")(
        **{k: v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype == np.float32 else v
           for k, v in case.items()}, **kw, training=False).y
    yq = run(getattr(rnnkern, f"{cell}_forward"), case, kw).y
    err = np.abs(yq - y64).max() / np.abs(y64).max()
    assert err <= INT8_ERROR, err


def test_projection_error_against_float64() -> None:
    """The projection in int8: y within INT8_ERROR of float64 (relative to max |y64|), as the
    plain cells."""
    case = make_lstm_variant_case("proj", 30, 4, 64, 64, np.float32, seed=3)
    y64 = reference.lstm_forward(**{k: v.astype(np.float64) if isinstance(v, np.ndarray) else v
                                    for k, v in case.items()}, training=False).y
    yq = rnnkern.lstm_forward(**case, training=False, precision="int8").y
    err = np.abs(yq - y64).max() / np.abs(y64).max()
    assert 2.0**-12 < err <= INT8_ERROR, err  # quantized, and within the bound


def test_layer_norm_in_int8_is_refused() -> None:
    """Normalizing the int8 sums turns their relative error into an absolute one in every gate
    (docs/precision.md): refused with ValueError naming ln_gates, by the kernels, the pack and
    the layers."""
    case = make_lstm_variant_case("ln", 3, 2, 4, 6, np.float32, seed=1)
    with pytest.raises(ValueError, match="ln_gates: layer norm has no int8 kernels"):
        rnnkern.lstm_forward(**case, training=False, precision="int8")
    with pytest.raises(ValueError, match="ln_gates: layer norm has no int8 kernels"):
        rnnkern.lstm_pack(case["w_ih"], case["w_hh"], None, None, precision="int8",
                          ln_gates=case["ln_gates"], ln_cell=case["ln_cell"])
    with pytest.raises(ValueError, match="ln_gates: layer norm has no int8 kernels"):
        rnnkern.nn.LSTM(4, 6, layer_norm=True, precision="int8")(case["x"], training=False)


#: int8's own error bound against float64 for test_error_against_float64 (docs/tolerances.md).
INT8_ERROR = 2e-2


@pytest.mark.parametrize("cell,kw", CELLS, ids=lambda v: str(v))
def test_layers_in_int8(cell: str, kw: dict[str, Any]) -> None:
    """rnnkern.nn layers with precision="int8": inference gives the functional int8 call's bits;
    training raises ValueError naming precision, for one layer and for a bidirectional stack
    (whose inference runs)."""
    layer_cls = {"rnn": rnnkern.nn.RNN, "lstm": rnnkern.nn.LSTM, "gru": rnnkern.nn.GRU}[cell]
    layer = layer_cls(6, 10, seed=3, precision="int8", **kw)
    assert "precision='int8'" in repr(layer)
    x = np.random.default_rng(4).standard_normal((5, 3, 6)).astype(np.float32)
    w = [layer.params.get(n) for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    states = (None, None) if cell == "lstm" else (None,)
    want = getattr(rnnkern, f"{cell}_forward")(x, *states, *w, precision="int8", training=False,
                                               **kw)
    np.testing.assert_array_equal(layer(x, training=False)[0], want.y)
    with pytest.raises(ValueError, match="precision: 'int8' is inference only"):
        layer(x)
    stack = layer_cls(6, 10, num_layers=2, bidirectional=True, seed=3, precision="int8", **kw)
    with pytest.raises(ValueError, match="precision: 'int8' is inference only"):
        stack(x)
    assert stack(x, training=False)[0].shape == (5, 3, 20)


def test_projection_layers_in_int8() -> None:
    """rnnkern.nn.LSTM with proj_size and precision="int8": one layer gives the functional int8
    call's bits; a 2-layer bidirectional stack stays within two layers' int8 error of the same
    stack in float32."""
    layer = rnnkern.nn.LSTM(6, 10, proj_size=4, seed=3, precision="int8")
    x = np.random.default_rng(4).standard_normal((5, 3, 6)).astype(np.float32)
    p = layer.params
    w = [p.get(n) for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    want = rnnkern.lstm_forward(x, None, None, *w, w_hr=p.get("weight_hr_l0"), precision="int8",
                                training=False)
    np.testing.assert_array_equal(layer(x, training=False)[0], want.y)
    with pytest.raises(ValueError, match="precision: 'int8' is inference only"):
        layer(x)
    stack = rnnkern.nn.LSTM(6, 10, num_layers=2, bidirectional=True, proj_size=4, seed=3,
                            precision="int8")
    stack32 = rnnkern.nn.LSTM(6, 10, num_layers=2, bidirectional=True, proj_size=4, seed=3)
    yq, y32 = stack(x, training=False)[0], stack32(x, training=False)[0]
    assert yq.shape == y32.shape == (5, 3, 2 * 4)
    err = np.abs(yq - y32).max() / np.abs(y32).max()
    assert 2.0**-12 < err <= 2 * INT8_ERROR, err
