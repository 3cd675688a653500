"""Weights packed once (rnnkern.{rnn,lstm,gru}_pack) and caches that cannot go stale.

The packed path gives the bits of the per-call path (which packs inside the call); a pack and a
training cache are snapshots: in-place changes of the caller's x, lengths or weights after the
call change neither (issue 18, item 1). One check_backward serves both backends (item 13).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from rnnkern_testing import CELLS, assert_close, make_case, make_output_grads
from test_errors import assert_same
from test_kernels_vs_reference import run

import rnnkern
from rnnkern import _core, reference

SHAPES = [(1, 1, 3, 5), (4, 3, 7, 33), (3, 5, 0, 9), (6, 9, 20, 70)]
CELL_IDS = {("rnn", "tanh"): 0, ("rnn", "relu"): 1, ("rnn", "sigmoid"): 2, ("lstm", ""): 3,
            ("gru", True): 4, ("gru", False): 5}


def _id(value: Any) -> str:
    return value[0] + "-" + "-".join(str(v) for v in value[1].values()) if isinstance(
        value, tuple) and isinstance(value[0], str) else str(value)


def pack(cell: str, case: dict[str, Any], kw: dict[str, Any]) -> rnnkern.PackedWeights:
    weights = [case[k] for k in ("w_ih", "w_hh", "b_ih", "b_hh")]
    packer = getattr(rnnkern, f"{cell}_pack")
    return packer(*weights, **kw)  # type: ignore[no-any-return]


def run_packed(cell: str, case: dict[str, Any], grads: dict[str, Any],
               kw: dict[str, Any]) -> tuple[Any, Any]:
    """Forward then backward with the weights packed once."""
    p = pack(cell, case, kw)
    state = {k: case[k] for k in ("h0", "c0") if k in case}
    out = p.forward(case["x"], **state, lengths=case.get("lengths"))
    return out, getattr(rnnkern, f"{cell}_backward")(out.cache, **grads)


def core_id(cell: str, kw: dict[str, Any]) -> int:
    variant = kw.get("nonlinearity", "tanh") if cell == "rnn" else kw.get(
        "linear_before_reset", True) if cell == "gru" else ""
    return CELL_IDS[(cell, variant)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("cell_kw", CELLS, ids=_id)
def test_packed_gives_the_bits_of_the_per_call_path(cell_kw: tuple[str, dict[str, Any]],
                                                    shape: tuple[int, int, int, int],
                                                    dtype: Any) -> None:
    """Pack once, run forward (training and inference) and backward: the same bits as the
    existing per-call bindings _core.forward / _core.backward, which pack inside the call."""
    cell, kw = cell_kw
    T, B, I, H = shape
    case = make_case(cell, T, B, I, H, dtype, lengths="random", seed=5)
    grads = make_output_grads(cell, T, B, H, dtype, seed=6)
    out, g = run_packed(cell, case, grads, kw)
    args = [case.get(k) for k in ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "lengths")]
    y, h_n, c_n, buffers = _core.forward(core_id(cell, kw), *args, True)
    np.testing.assert_array_equal(out.y, y, strict=True)
    np.testing.assert_array_equal(out.h_n, h_n, strict=True)
    if cell == "lstm":
        np.testing.assert_array_equal(out.c_n, c_n, strict=True)
    per_call = _core.backward(core_id(cell, kw), case["x"], case["w_ih"], case["w_hh"], True,
                              case["lengths"], buffers, grads["dy"], grads["dh_n"],
                              grads.get("dc_n"))
    got = [v for v in g if v is not None]
    assert len(got) == len([v for v in per_call if v is not None])
    for a, b in zip(got, [v for v in per_call if v is not None]):
        np.testing.assert_array_equal(a, b, strict=True)
    p = pack(cell, case, kw)
    state = {k: case[k] for k in ("h0", "c0") if k in case}
    inference = p.forward(case["x"], **state, lengths=case["lengths"], training=False)
    assert inference.cache is None
    np.testing.assert_array_equal(inference.y, out.y, strict=True)


@pytest.mark.parametrize("cell_kw", CELLS, ids=_id)
def test_in_place_changes_after_the_forward_change_no_gradient(
        cell_kw: tuple[str, dict[str, Any]]) -> None:
    """Forward, then x, lengths, every weight and bias changed in place, then backward: the
    gradients of the forward that ran (as the reference gives), never a mix; the same through a
    pack, and a pack ignores later changes of the arrays it was made from."""
    cell, kw = cell_kw
    T, B, I, H = 5, 3, 4, 6
    case = make_case(cell, T, B, I, H, np.float64, lengths="random", seed=7)
    grads = make_output_grads(cell, T, B, H, np.float64, seed=8)
    fresh = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in case.items()}
    expected_out, expected = run(rnnkern, cell, fresh, grads, kw)
    for make in ("functional", "packed", "reference"):
        case = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in fresh.items()}
        if make == "packed":
            p = pack(cell, case, kw)
            state = {k: case[k] for k in ("h0", "c0") if k in case}
            out = p.forward(case["x"], **state, lengths=case["lengths"])
        else:
            module = rnnkern if make == "functional" else reference
            out = getattr(module, f"{cell}_forward")(**case, **kw)
        for name in ("x", "w_ih", "w_hh", "b_ih", "b_hh"):
            case[name] *= 1.5
        case["lengths"][:] = T
        module = reference if make == "reference" else rnnkern
        g = getattr(module, f"{cell}_backward")(out.cache, **grads)
        for name, a, b in zip(g._fields, g, expected):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=f"{make} {name}")
        if make == "packed":  # the pack still has the old weights
            again = p.forward(fresh["x"], **state, lengths=fresh["lengths"], training=False)
            np.testing.assert_array_equal(again.y, expected_out.y, strict=True)


def test_a_pack_runs_on_the_isa_it_was_made_for() -> None:
    """set_isa after packing: the pack keeps its own ISA's kernels (its panels are laid out for
    them) and says which; the functional call follows set_isa."""
    case = make_case("lstm", 4, 3, 5, 21, np.float32, seed=9)
    weights = [case[k] for k in ("w_ih", "w_hh", "b_ih", "b_hh")]
    isas = rnnkern.config()["supported_isas"]
    default = rnnkern.config()["isa"]
    try:
        by_isa = {}
        for isa in isas:
            rnnkern.set_isa(isa)
            by_isa[isa] = (rnnkern.lstm_pack(*weights), rnnkern.lstm_forward(**case).y)
        for isa in isas:
            rnnkern.set_isa(isa)
            for made, (p, y) in by_isa.items():
                assert p.isa == made
                np.testing.assert_array_equal(p.forward(case["x"], case["h0"], case["c0"]).y, y,
                                              strict=True)
    finally:
        rnnkern.set_isa(default)


def test_packed_forward_rejects_bad_arguments() -> None:
    case = make_case("gru", 3, 2, 4, 5, np.float32, seed=10)
    p = rnnkern.gru_pack(case["w_ih"], case["w_hh"], case["b_ih"], case["b_hh"])
    with pytest.raises(TypeError, match=r"^x: dtype float64 does not match the packed weights'"):
        p.forward(case["x"].astype(np.float64))
    with pytest.raises(ValueError, match=r"^x: expected shape \(T, B, I\) = \(T, B, 4\)"):
        p.forward(case["x"][:, :, :3])
    with pytest.raises(ValueError, match=r"^x: expected shape .* with T >= 1"):
        p.forward(case["x"][:0])
    with pytest.raises(ValueError, match=r"^h0: expected shape \(B, H\) = \(2, 5\)"):
        p.forward(case["x"], case["x"][0])
    with pytest.raises(ValueError, match="^c0: only lstm"):
        p.forward(case["x"], None, case["h0"])
    with pytest.raises(ValueError, match="^lengths: every value"):
        p.forward(case["x"], lengths=np.array([0, 3]))
    with pytest.raises(TypeError, match="^training:"):
        p.forward(case["x"], training=None)
    with pytest.raises(ValueError, match=r"^w_hh: expected shape \(G\*H, H\) = \(15, 5\)"):
        rnnkern.gru_pack(case["w_ih"], case["w_hh"][:5], None, None)
    with pytest.raises(ValueError, match="^b_hh: None, but b_ih is given"):
        rnnkern.gru_pack(case["w_ih"], case["w_hh"], case["b_ih"], None)
    with pytest.raises(TypeError, match="^w_ih: dtype float64 does not match w_hh's dtype"):
        rnnkern.gru_pack(case["w_ih"].astype(np.float64), case["w_hh"], None, None)
    with pytest.raises(TypeError, match="^w_hh: dtype int64 is not supported"):
        rnnkern.rnn_pack(case["w_ih"], np.zeros((5, 5), np.int64), None, None)
    with pytest.raises(ValueError, match="^nonlinearity:"):
        rnnkern.rnn_pack(case["w_ih"][:5], case["w_hh"][:5], None, None, nonlinearity="elu")
    assert "packed gru" in repr(p) and "H=5" in repr(p)


# (name, how the mistake is made from (forward output, incoming grads, other cell's cache))
MISTAKES = [
    ("None cache", lambda out, g, other: (None, g)),
    ("a dict as cache", lambda out, g, other: ({"y": 1}, g)),
    ("another cell's cache", lambda out, g, other: (other, g)),
    ("dy wrong shape", lambda out, g, other: (out.cache, {**g, "dy": g["dy"][:, :1]})),
    ("dy wrong dtype", lambda out, g, other: (out.cache, {**g, "dy": g["dy"].astype(np.float32)})),
    ("dy a list", lambda out, g, other: (out.cache, {**g, "dy": g["dy"].tolist()})),
    ("dh_n wrong shape", lambda out, g, other: (out.cache, {**g, "dh_n": g["dy"][0, :, :2]})),
]


@pytest.mark.parametrize("mistake", MISTAKES, ids=lambda m: m[0])
@pytest.mark.parametrize("cell_kw", CELLS, ids=_id)
def test_both_backends_give_the_same_backward_messages(cell_kw: tuple[str, dict[str, Any]],
                                                       mistake: Any) -> None:
    cell, kw = cell_kw
    messages = []
    for module in (rnnkern, reference):
        case = make_case(cell, 3, 2, 4, 5, np.float64, seed=11)
        grads = make_output_grads(cell, 3, 2, 5, np.float64, seed=12)
        out = getattr(module, f"{cell}_forward")(**case, **kw)
        other_cell = "rnn" if cell != "rnn" else "gru"
        other = getattr(module, f"{other_cell}_forward")(
            **make_case(other_cell, 3, 2, 4, 5, np.float64, seed=13)).cache
        cache, g = mistake[1](out, grads, other)
        with pytest.raises((TypeError, ValueError)) as info:
            getattr(module, f"{cell}_backward")(cache, **g)
        messages.append((type(info.value), str(info.value)))
    assert messages[0] == messages[1]
    assert messages[0][1].split(":")[0] in ("cache", "dy", "dh_n")


def test_a_pack_is_shared_by_python_threads() -> None:
    """One pack used by 4 Python threads at once (forward and backward): the serial results."""
    from concurrent.futures import ThreadPoolExecutor

    case = make_case("lstm", 6, 9, 20, 70, np.float32, seed=14)
    grads = make_output_grads("lstm", 6, 9, 70, np.float32, seed=15)
    p = pack("lstm", case, {})
    serial = run_packed("lstm", case, grads, {})

    def job(_: int) -> tuple[Any, Any]:
        out = p.forward(case["x"], case["h0"], case["c0"])
        return out, rnnkern.lstm_backward(out.cache, **grads)

    with ThreadPoolExecutor(4) as pool:
        for out, g in pool.map(job, range(12)):
            assert_same(out, serial[0])
            assert_same(g, serial[1])


@pytest.mark.parametrize("cell_kw", CELLS, ids=_id)
@pytest.mark.parametrize("precision", ["float", "bf16"])
def test_the_reference_has_packed_weights_too(cell_kw: tuple[str, dict[str, Any]],
                                              precision: str) -> None:
    """reference.{cell}_pack: the same API as rnnkern's, the reference's results (and caches for
    the reference's backward), on copies of the weights."""
    cell, kw = cell_kw
    case = make_case(cell, T=6, B=3, I=5, H=7, dtype=np.float32, lengths="random")
    weights = [case[k] for k in ("w_ih", "w_hh", "b_ih", "b_hh")]
    pack = getattr(reference, f"{cell}_pack")(*weights, **kw, precision=precision)
    ours = getattr(rnnkern, f"{cell}_pack")(*weights, **kw, precision=precision)
    for attr in ("cell", "variant", "dtype", "input_size", "hidden_size", "has_bias", "precision"):
        assert getattr(pack, attr) == getattr(ours, attr), attr
    states = (case["h0"], case["c0"]) if cell == "lstm" else (case["h0"],)
    want = getattr(reference, f"{cell}_forward")(case["x"], *states, *weights, **kw,
                                                  lengths=case["lengths"], precision=precision)
    case["w_hh"][:] = 0  # the pack holds copies
    got = pack.forward(case["x"], *states, lengths=case["lengths"])
    for a, b in zip(got[:-1], want[:-1]):
        np.testing.assert_array_equal(a, b)
    grads = make_output_grads(cell, 6, 3, 7, np.float32)
    backward = getattr(reference, f"{cell}_backward")
    for a, b in zip(backward(got.cache, **grads), backward(want.cache, **grads)):
        if b is None:
            assert a is None
        else:
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="x"):
        pack.forward(case["x"][:, :, :-1], *states)
    assert pack.isa == "reference" and "reference" in repr(pack)


@pytest.mark.parametrize("variants", [("w_hr",), ("w_peep",), ("w_hr", "w_peep")])
def test_the_reference_lstm_pack_takes_the_variants(variants: tuple[str, ...]) -> None:
    """reference.lstm_pack(w_hr=, w_peep=) as the compiled lstm_pack: the same attributes and
    errors, the reference lstm_forward's results on copies of the weights."""
    T, B, I, H, P = 5, 3, 4, 6, 3
    rng = np.random.default_rng(7)
    P = P if "w_hr" in variants else H
    arrays = {"w_ih": (4 * H, I), "w_hh": (4 * H, P), "b_ih": (4 * H,), "b_hh": (4 * H,),
              "w_hr": (P, H), "w_peep": (3, H)}
    w = {k: rng.standard_normal(s) * 0.5 for k, s in arrays.items()
         if k not in ("w_hr", "w_peep") or k in variants}
    extra = {k: w[k] for k in variants}
    weights = [w[k] for k in ("w_ih", "w_hh", "b_ih", "b_hh")]
    pack = reference.lstm_pack(*weights, **extra)
    ours = rnnkern.lstm_pack(*weights, **extra)
    for attr in ("variant", "input_size", "hidden_size", "output_size", "has_bias"):
        assert getattr(pack, attr) == getattr(ours, attr), attr
    x, h0, c0 = rng.standard_normal((T, B, I)), rng.standard_normal((B, P)), rng.standard_normal(
        (B, H))
    want = reference.lstm_forward(x, h0, c0, *weights, **extra)
    for a in w.values():
        a[...] = 0  # the pack holds copies
    got = pack.forward(x, h0, c0)
    for a, b, c in zip(got[:-1], want[:-1], ours.forward(x, h0, c0)[:-1]):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(c, b, rtol=1e-10, atol=1e-12)
    grads = reference.lstm_backward(got.cache, np.ones((T, B, P)))
    assert [f for f in grads._fields if f in ("dw_hr", "dw_peep")] == [
        "d" + v for v in ("w_hr", "w_peep") if v in variants]
    assert f"P={P}" in repr(pack) or "w_hr" not in variants
    with pytest.raises(ValueError, match="h0"):
        pack.forward(x, np.zeros((B, P + 1)), c0)
    for module in (reference, rnnkern):  # the same message for a projection to nothing
        with pytest.raises(ValueError, match="w_hr") as info:
            module.lstm_pack(*weights[:1], np.zeros((4 * H, 0)), *weights[2:],
                             w_hr=np.zeros((0, H)))
    assert "P >= 1" in str(info.value)


@pytest.mark.parametrize("unbatched", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
@pytest.mark.parametrize("cell_kw", CELLS, ids=_id)
def test_one_step_gives_the_bits_of_a_one_step_forward(cell_kw: tuple[str, dict[str, Any]],
                                                       dtype: Any, unbatched: bool) -> None:
    """PackedWeights._step (the cells' fast path): the outputs and backward of pack.forward with
    T = 1, in training and inference, with and without a state, x (B, I) or unbatched (I,); the
    cache keeps its own x."""
    cell, kw = cell_kw
    for h0 in (True, False):
        case = make_case(cell, 1, 1 if unbatched else 3, 5, 7, dtype, h0=h0)
        p = pack(cell, case, kw)
        state = [case.get(k) for k in ("h0", "c0")]
        ref = p.forward(case["x"], *state)
        shape = (lambda a: a.reshape(a.shape[1:])) if unbatched else (lambda a: a)
        args = [None if a is None else shape(a) for a in (case["x"][0], *state)]
        for train in (False, True):
            h, c, cache = p._step(*args[:2], args[2] if cell == "lstm" else None, train)
            np.testing.assert_array_equal(h, shape(ref.h_n))
            if cell == "lstm":
                np.testing.assert_array_equal(c, shape(ref.c_n))
            else:
                assert c is None
            assert (cache is None) != train
        assert cache is not None
        args[0][...] = 7  # the cache's x is its own
        dh = np.ones_like(ref.h_n)
        bw = getattr(rnnkern, f"{cell}_backward")
        for a, b in zip(bw(cache, None, dh), bw(ref.cache, None, dh)):
            np.testing.assert_array_equal(a, b)


def test_one_step_declines_what_is_not_exact() -> None:
    """_step returns None (the callers' general path converts or raises) for anything but
    C-contiguous arrays of the pack's dtype and exact shapes."""
    case = make_case("lstm", 1, 2, 3, 4, np.float32)
    p = pack("lstm", case, {})
    x, h, c = case["x"][0], case["h0"], case["c0"]
    assert p._step(x, h, c, False) is not None
    wide = np.zeros((2, 6), np.float32)
    for args in [(x.astype(np.float64), h, c), (x.tolist(), h, c), (wide[:, ::2], h, c),
                 (x, h[:1], c), (x, h, c[:, :3]), (x[None], h, c), (x[0], h, c),
                 (x, h.T.copy().T, c.astype(np.float64)), (x, (h, c), None), (x, h, 1.0)]:
        assert p._step(*args, True) is None
    q = pack("gru", make_case("gru", 1, 2, 3, 4, np.float32), {})
    assert q._step(x, h, None, False) is not None
    assert q._step(x, h, c, False) is None  # a GRU has no c


def _walk_case(cell: str, kw: dict[str, Any], dtype: Any
               ) -> tuple[rnnkern.PackedWeights, dict[str, Any]]:
    """A pack at H = 256 (a team of two, several pieces of blocks per member) and its arguments;
    kw "variants": an LSTM with a projection (P = 128), peepholes and layer norm."""
    T, B, I, H, P = 5, 4, 32, 256, 128
    case = make_case(cell, T, B, I, H, dtype, seed=5)
    if kw != "variants":
        return pack(cell, case, kw), case
    rng = np.random.default_rng(6)

    def r(*shape: int, mean: float = 0.0) -> Any:
        return (mean + 0.1 * rng.standard_normal(shape)).astype(dtype)
    case["w_hh"], case["h0"] = case["w_hh"][:, :P].copy(), case["h0"][:, :P].copy()
    extra = {"w_hr": r(P, H), "w_peep": r(3, H),
             "ln_gates": r(2, 4 * H, mean=1.0), "ln_cell": np.stack([r(H, mean=1.0), r(H)])}
    return pack(cell, case, extra), case


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
@pytest.mark.parametrize("cell_kw", [*CELLS, ("lstm", "variants")],
                         ids=lambda v: "lstm-variants" if v[1] == "variants" else _id(v))
def test_block_walks_keep_the_bits(cell_kw: tuple[str, Any], dtype: Any) -> None:
    """A one-step call (T = 1) walks each thread's blocks up on one call and down on the next
    (recurrent.cpp's serpentine), projecting x piece by piece between the recurrent products:
    two steps from the same state give the bits of each other and of a T = 1 forward; around
    them, a whole forward and backward keeps its bits after an odd number of steps as after an
    even one; and a loop of steps is the sequence to rounding."""
    cell, kw = cell_kw
    p, case = _walk_case(cell, kw, dtype)
    lstm = cell == "lstm"
    state = {k: case[k] for k in ("h0", "c0") if k in case}
    dy = np.random.default_rng(7).standard_normal(
        (*case["x"].shape[:2], p.output_size)).astype(dtype)
    bw = getattr(rnnkern, f"{cell}_backward")

    def run_once() -> list[Any]:
        out = p.forward(case["x"], **state)
        return [out.y, out.h_n, *([out.c_n] if lstm else []), *bw(out.cache, dy)]

    first = run_once()
    for odd in (1, 2):  # one more step, then two more: the walks' parities flip, then stay
        for _ in range(odd):
            p._step(case["x"][0], case["h0"], case["c0"] if lstm else None, False)
        for a, b in zip(run_once(), first):
            np.testing.assert_array_equal(a, b, strict=True)
    # two steps from the same state, one walking up and one down, and each as a T = 1 forward
    # (which runs as a step); the loop of steps is the sequence to rounding (a step's projection
    # tiles B rows, the sequence's T*B)
    x0, c0 = case["x"][0], case.get("c0")
    steps = [p._step(x0, case["h0"], c0, False) for _ in range(2)]
    one = p.forward(case["x"][:1], **state, training=False)
    for h, c, _ in steps:
        np.testing.assert_array_equal(h, one.h_n, strict=True)
        if lstm:
            np.testing.assert_array_equal(c, one.c_n, strict=True)
    h, c = case["h0"], c0
    for t, x in enumerate(case["x"]):
        h, c, _ = p._step(x, h, c, False)
        assert_close(h, first[0][t], dtype=dtype, acc_len=case["x"].shape[2] + h.shape[1])
