"""Benchmarks of one LSTM/GRU/RNN layer: one pytest-benchmark group per (cell, shape, pass) with
rnnkern, the NumPy reference, PyTorch and ONNX Runtime side by side, each result checked against
the float64 reference.

Passes: "fwd" = inference (rnnkern training=False), "fwdbwd" = forward(training=True) +
backward(cache, dy) (ONNX Runtime has none). The reference is not timed at big shapes
(`peers.is_big`: S4), and big shapes are marked `big`: skipped under --benchmark-disable unless
--bench-big is given (see conftest.py). Run e.g.

    PYTHONPATH=python pytest benchmarks --benchmark-columns=median,iqr,rounds
    PYTHONPATH=python pytest benchmarks --benchmark-disable        # once each, as CI does
"""
from __future__ import annotations

from typing import Callable

import peers
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

Case = Callable[[str, str], tuple[peers.Problem, peers.Result]]  # the `case` fixture

# in this order, so that the peers of one (cell, shape) run one after the other
_CASES = [
    pytest.param(cell, shape, pass_, peer, id=f"{cell}-{shape}-{pass_}-{peer}",
                 marks=[pytest.mark.big] if peers.is_big(cell, s) else [])
    for cell in peers.CELLS
    for shape, s in peers.SHAPES.items()
    for pass_ in peers.PASSES
    for peer in peers.PEERS
    if not (peer == "ort" and pass_ == "fwdbwd")
    and not (peer == "reference" and peers.is_big(cell, s))
]


@pytest.mark.parametrize(("cell", "shape", "pass_", "peer"), _CASES)
def test_bench(benchmark: BenchmarkFixture, bench_threads: int, case: Case, cell: str,
               shape: str, pass_: str, peer: str) -> None:
    problem, want = case(cell, shape)
    p = peers.build_peer(peer, problem, bench_threads)  # a peer that does not import fails
    benchmark.group = f"{cell}-{shape}-{pass_}"
    benchmark.extra_info.update(cell=cell, shape=problem.shape.label(), pass_=pass_,
                                threads=bench_threads,
                                fwd_gflop=peers.flops(cell, problem.shape) / 1e9)
    got = benchmark(p.forward if pass_ == "fwd" else p.forward_backward)
    errors = peers.check_result(got, want, problem, grads=pass_ == "fwdbwd")
    assert not errors, f"{peer} {cell} {shape} {pass_}: " + "; ".join(errors)
