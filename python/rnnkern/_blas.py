"""NumPy's own BLAS, as rnnkern's layers use it: one thread around their products.

After a multi-threaded product OpenBLAS keeps its workers spinning for about 0.1 s, on the cores
that rnnkern's kernels want next (they meet at a barrier every step): on 2 cores a training loop
of rnnkern.nn layers ran 1.7x slower. rnnkern's own NumPy products (``Linear``) therefore run
NumPy's BLAS on one thread, which never wakes those workers, and put the setting back after.
threadpoolctl finds the BLAS libraries once (milliseconds); a switch is two C calls.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

_controller: Any = None
_lock = threading.Lock()
_depth = 0  # products in flight with one thread (any Python thread)
_saved: list[int] = []  # the libraries' thread counts before the first of them


def controller() -> Any:
    """threadpoolctl's controller of the libraries loaded now (made once)."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped,unused-ignore]

        _controller = ThreadpoolController()
    return _controller


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """NumPy's BLAS on one thread in the block; the count before comes back when the last block
    open in any Python thread closes (the setting is global to the process)."""
    global _depth, _saved
    libs = [c for c in controller().lib_controllers if c.user_api == "blas"]
    with _lock:
        if _depth == 0:
            _saved = [c.get_num_threads() for c in libs]
            for c in libs:
                c.set_num_threads(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for c, n in zip(libs, _saved):
                    c.set_num_threads(n)
