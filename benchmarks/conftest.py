"""pytest configuration of the benchmark suite: the thread count and the problems with their
float64 oracles, shared by every peer of a group."""
from __future__ import annotations

import functools
from typing import Callable

import peers
import pytest

Case = Callable[[str, str], tuple[peers.Problem, peers.Result]]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-threads", type=int, default=None,
        help="intra-op threads of rnnkern, torch and ONNX Runtime (default: the cores available)")
    parser.addoption(
        "--bench-big", action="store_true", default=False,
        help="run the big shapes (marked big) under --benchmark-disable too")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "big: a big shape (S4) whose float64 check takes seconds; skipped under "
        "--benchmark-disable unless --bench-big")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the big shapes when benchmarks are disabled (a correctness run, as in CI) unless
    --bench-big: the smaller shapes check the same code paths in a fraction of the time."""
    disabled = (config.getoption("benchmark_disable", False)
                and not config.getoption("benchmark_enable", False))
    if not disabled or config.getoption("--bench-big"):
        return
    skip = pytest.mark.skip(reason="big shape under --benchmark-disable (pass --bench-big to run)")
    for item in items:
        if "big" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def bench_threads(pytestconfig: pytest.Config) -> int:
    """The thread count of every peer, set once for the session (rnnkern and torch globally, ORT
    per session)."""
    n = pytestconfig.getoption("--bench-threads") or peers.default_threads()
    peers.set_threads(n)
    return n


@pytest.fixture(scope="session")
def case() -> Case:
    """(cell, shape name) -> (float32 problem, float64 oracle result). Keeps one case: the
    parametrization runs each (cell, shape) contiguously."""
    @functools.lru_cache(maxsize=1)
    def make(cell: str, shape: str) -> tuple[peers.Problem, peers.Result]:
        problem = peers.make_problem(cell, peers.SHAPES[shape])
        return problem, peers.oracle(problem)
    return make
