"""Fixtures of the shared test helpers (tests/rnnkern_testing.py, imported by name there)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

import pytest
from rnnkern_testing import ISAS, assert_close, make_case


@pytest.fixture(name="assert_close")
def _assert_close_fixture() -> Callable[..., None]:
    return assert_close


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest) -> Any:
    """Each ISA this CPU runs, set for the test (a module's own ``isa`` fixture overrides it)."""
    import rnnkern
    before = rnnkern.config()["isa"]
    rnnkern.set_isa(request.param)
    yield request.param
    rnnkern.set_isa(before)


@pytest.fixture(name="make_case")
def _make_case_fixture() -> Callable[..., dict[str, Any]]:
    return make_case


@pytest.fixture
def num_threads() -> Iterator[Callable[[int], None]]:
    """rnnkern.set_num_threads for one test; the thread count before it is restored after."""
    import rnnkern
    before = rnnkern.get_num_threads()
    yield rnnkern.set_num_threads
    rnnkern.set_num_threads(before)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch's own modules on one thread for the test: its OpenMP threads crawl on a busy
    2-core machine."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
