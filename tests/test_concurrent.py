"""Independent calls side by side (rnnkern._functional.forward_many / backward_many, C++
rnnkern::concurrently): the same bits as the calls one by one, whatever the threads."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from rnnkern_testing import make_case, make_output_grads

import rnnkern
from rnnkern import _functional

PACKERS = {"rnn": rnnkern.rnn_pack, "lstm": rnnkern.lstm_pack, "gru": rnnkern.gru_pack}


def _calls(dtype: Any, n: int = 3) -> list[tuple[Any, ...]]:
    """n independent (pack, x, h0, c0, lengths) of different cells, sizes and lengths."""
    out = []
    for i, cell in enumerate(["lstm", "gru", "rnn", "lstm"][:n]):
        T, B, I, H = 7 + i, 3 - i % 2, 5 + i, 9 + 2 * i  # odd H: partial blocks
        case = make_case(cell, T=T, B=B, I=I, H=H, dtype=dtype, seed=i,
                         lengths="random" if i % 2 else None)
        pack = PACKERS[cell](case["w_ih"], case["w_hh"], case["b_ih"], case["b_hh"])
        out.append((pack, case["x"], case["h0"], case.get("c0"), case["lengths"]))
    return out


def _one_by_one(calls: list[tuple[Any, ...]], training: bool) -> list[Any]:
    return [pack.forward(x, h0, c0, lengths=lengths, training=training)
            for pack, x, h0, c0, lengths in calls]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("training", [False, True])
def test_forward_many_equals_one_by_one(dtype: Any, threads: int, training: bool,
                                        num_threads: Any) -> None:
    calls = _calls(dtype)
    want = _one_by_one(calls, training)
    num_threads(threads)
    got = _functional.forward_many(calls, training=training)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert type(g) is type(w)
        for a, b in zip(g[:-1], w[:-1]):  # y, h_n (, c_n): bitwise
            np.testing.assert_array_equal(a, b)
        assert (g.cache is None) == (not training)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_many_equals_one_by_one(dtype: Any) -> None:
    calls = _calls(dtype, n=4)
    outs = _functional.forward_many(calls, training=True)
    grads_in = []
    for (pack, x, *_), out in zip(calls, outs):
        T, B, _ = x.shape
        g = make_output_grads(pack.cell, T, B, pack.hidden_size, dtype, seed=5)
        grads_in.append((out.cache, g["dy"], g["dh_n"], g.get("dc_n")))
    got = _functional.backward_many(grads_in)
    for (pack, *_), (cache, dy, dh_n, dc_n), g in zip(calls, grads_in, got):
        backward = getattr(rnnkern, f"{pack.cell}_backward")
        want = backward(cache, dy, dh_n, dc_n) if pack.cell == "lstm" else backward(cache, dy, dh_n)
        assert type(g) is type(want)
        for a, b in zip(g, want):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threads", [1, 2])
def test_calls_big_enough_for_a_team_run_one_by_one_with_the_same_bits(threads: int,
                                                                       num_threads: Any) -> None:
    """Calls that plan a team of threads run one after another (each with the team), not side
    by side; the results are the same either way."""
    rng = np.random.default_rng(7)
    T, B, I, H = 20, 4, 256, 256  # about 40M multiply-adds: a team's call
    calls = []
    for _ in range(2):
        w = [rng.uniform(-0.06, 0.06, s).astype(np.float32) for s in ((4 * H, I), (4 * H, H))]
        calls.append((rnnkern.lstm_pack(*w, None, None),
                      rng.uniform(-1, 1, (T, B, I)).astype(np.float32), None, None, None))
    want = _one_by_one(calls, True)
    num_threads(threads)
    got = _functional.forward_many(calls, training=True)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.y, w.y)
        np.testing.assert_array_equal(g.c_n, w.c_n)


def test_a_bad_call_is_reported_before_any_runs() -> None:
    calls = _calls(np.float32, n=2)
    pack, x, h0, c0, lengths = calls[1]
    calls[1] = (pack, x[:, :, :-1], h0, c0, lengths)  # wrong I
    with pytest.raises(ValueError, match="x"):
        _functional.forward_many(calls)
    with pytest.raises(TypeError, match="KernelCache"):
        _functional.backward_many([(object(), None, None, None)])  # type: ignore[list-item]


def test_no_calls() -> None:
    assert _functional.forward_many([]) == []
    assert _functional.backward_many([]) == []
