"""Checks of the benchmark machinery itself: problems, the result check, the ONNX conversion
(against PyTorch, independent of rnnkern) and the round-robin timer."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import peers
import pytest
import timing

SMALL = peers.Shape("tiny", B=3, T=5, I=4, H=6)


@pytest.mark.parametrize("cell", peers.CELLS)
def test_make_problem_shapes_and_exact_float64(cell: str) -> None:
    p = peers.make_problem(cell, SMALL)
    G = peers.GATES[cell]
    assert p.x.shape == (5, 3, 4) and p.dy.shape == (5, 3, 6) and p.h0.shape == (3, 6)
    assert p.w_ih.shape == (G * 6, 4) and p.w_hh.shape == (G * 6, 6)
    assert p.b_ih.shape == p.b_hh.shape == (G * 6,)
    assert (p.c0 is not None) == (cell == "lstm")
    assert p.dtype == np.float32
    p64 = p.astype(np.float64)
    assert p64.x.dtype == np.float64 and np.array_equal(p64.w_hh.astype(np.float32), p.w_hh)


def test_make_problem_rejects_unknown_cell() -> None:
    with pytest.raises(ValueError, match="cell"):
        peers.make_problem("lstmx", SMALL)


def test_flops_counts_both_products() -> None:
    s = peers.Shape("x", B=2, T=3, I=5, H=7)
    assert peers.flops("lstm", s) == 2 * 3 * 2 * 4 * 7 * (5 + 7)
    assert peers.flops("rnn", s) == 2 * 3 * 2 * 1 * 7 * (5 + 7)


def _exact(cell: str) -> tuple[peers.Problem, peers.Result]:
    """A float32 problem and a float64 "oracle" that is the torch float64 result."""
    p = peers.make_problem(cell, SMALL)
    return p, peers.TorchPeer(p.astype(np.float64)).forward_backward()


@pytest.mark.parametrize("cell", peers.CELLS)
def test_check_result_accepts_float32_and_flags_errors(cell: str) -> None:
    p, want = _exact(cell)
    got = peers.TorchPeer(p).forward_backward()
    assert peers.check_result(got, want, p, grads=True) == []
    bad_y = got.y.copy()  # (T, B, H)
    bad_y[-1, 0, 0] += 1e-3
    assert [e.split(":")[0] for e in peers.check_result(replace(got, y=bad_y), want, p,
                                                        grads=False)] == ["y"]
    assert got.grads is not None
    bad = dict(got.grads, dw_hh=got.grads["dw_hh"] * np.float32(1.001))
    assert [e.split(":")[0] for e in peers.check_result(replace(got, grads=bad), want, p,
                                                        grads=True)] == ["dw_hh"]
    nan_h = np.full_like(got.h_n, np.nan)  # (B, H)
    assert peers.check_result(replace(got, h_n=nan_h), want, p, grads=False)
    assert peers.check_result(replace(got, y=got.y[:-1]), want, p, grads=False)
    assert peers.check_result(replace(got, grads=None), want, p, grads=True) == ["grads: missing"]


@pytest.mark.parametrize("cell", peers.CELLS)
def test_ort_matches_torch(cell: str) -> None:
    p, want = _exact(cell)
    got = peers.OrtPeer(p, threads=1).forward()
    assert peers.check_result(got, want, p, grads=False) == []


def test_ort_gate_order_matters() -> None:
    """Swapping two gate blocks of the weights changes ORT's output: the check above can fail."""
    p, want = _exact("lstm")
    H = SMALL.H
    order = np.r_[H:2 * H, 0:H, 2 * H:4 * H]  # swap i and f
    swapped = replace(p, w_ih=p.w_ih[order], w_hh=p.w_hh[order], b_ih=p.b_ih[order],
                      b_hh=p.b_hh[order])
    assert peers.check_result(peers.OrtPeer(swapped, threads=1).forward(), want, p, grads=False)


def test_ort_has_no_training_pass() -> None:
    peer = peers.OrtPeer(peers.make_problem("rnn", SMALL), threads=1)
    assert not peer.trains
    with pytest.raises(NotImplementedError):
        peer.forward_backward()


def test_build_peer_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="name"):
        peers.build_peer("tensorflow", peers.make_problem("rnn", SMALL), 1)


def test_round_robin_samples_every_job() -> None:
    calls = {"a": 0, "b": 0}

    def job(k: str) -> None:
        calls[k] += 1

    samples = timing.round_robin({"a": lambda: job("a"), "b": lambda: job("b")}, repeat=3,
                                 min_time=0.0, pause=0.0)
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3}
    assert all(t >= 0.0 for v in samples.values() for t in v)
    # warm-up, calibration, then per sample an untimed call and one timed call
    assert calls == {"a": 2 + 2 * 3, "b": 2 + 2 * 3}
    with pytest.raises(ValueError, match="repeat"):
        timing.round_robin({"a": lambda: None}, repeat=0, min_time=0.0)


def test_round_robin_per_call_runs_before_every_call() -> None:
    log: list[str] = []
    samples = timing.round_robin({"a": lambda: log.append("a"), "b": lambda: log.append("b")},
                                 repeat=2, min_time=0.0, pause=0.0,
                                 before={"a": lambda: log.append("op")}, per_call=True)
    assert {k: len(v) for k, v in samples.items()} == {"a": 2, "b": 2}  # one call per sample
    # warm-up, calibration, then per sample an untimed call and one timed call; "op" before
    # every call of "a", never before "b"
    assert log.count("a") == log.count("b") == log.count("op") == 2 + 2 * 2
    assert all(log[i + 1] == "a" for i, x in enumerate(log) if x == "op")
    with pytest.raises(ValueError, match="before"):
        timing.round_robin({"a": lambda: None}, repeat=1, min_time=0.0,
                           before={"a": lambda: None})


def test_relative_spread() -> None:
    assert timing.relative_spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0 / 3.0)
    assert timing.relative_spread([2.0, 2.0, 2.0]) == 0.0
    assert timing.relative_spread([7.0]) == 0.0
