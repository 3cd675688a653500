"""rnnkern: fast fused CPU kernels for recurrent neural networks, with a NumPy reference.

The functional API (docs/api.md) runs on the compiled C++ kernels; ``rnnkern.reference`` is the
NumPy reference with the same signatures. ``rnnkern.nn`` has the layer modules.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from . import _blas, _core, _functional, data, diagnostics, models, nn, optim, reference
from ._functional import (
    PackedWeights,
    gru_backward,
    gru_forward,
    gru_pack,
    lstm_backward,
    lstm_forward,
    lstm_pack,
    rnn_backward,
    rnn_forward,
    rnn_pack,
    softmax,
    softmax_cross_entropy,
)

__version__ = "0.1.0"
__all__ = [
    "PackedWeights",
    "__version__",
    "config",
    "data",
    "diagnostics",
    "get_num_threads",
    "gru_backward",
    "gru_forward",
    "gru_pack",
    "lstm_backward",
    "lstm_forward",
    "lstm_pack",
    "models",
    "nn",
    "numpy_blas_threads",
    "optim",
    "reference",
    "rnn_backward",
    "rnn_forward",
    "rnn_pack",
    "set_isa",
    "set_num_threads",
    "set_thread_runtime",
    "softmax",
    "softmax_cross_entropy",
    "thread_runtime",
    "thread_stats",
]


def _check_thread_count(n: object) -> None:
    """TypeError unless n is an int (not a bool), ValueError unless n >= 1."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"n: expected an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n: expected n >= 1, got {n}")


def set_num_threads(n: int) -> None:
    """Let the kernels use up to n >= 1 threads (default: the CPUs this process may run on).

    A call never uses more threads than the CPUs available to the process (os.sched_getaffinity)
    nor more than 16: more threads than cores would only wait for each other, so
    ``set_num_threads(1000)`` on 2 cores means 2. ``get_num_threads()`` tells the number in use.
    """
    _check_thread_count(n)
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads a kernel call may use: min(n set, CPUs available, 16)."""
    return int(_core.get_num_threads())


def set_thread_runtime(name: str) -> None:
    """Whose threads run the kernels' parallel work: "auto" (the default), "rnnkern" or "openmp".

    "rnnkern" is rnnkern's own pool. "openmp" runs on the threads of a GNU-compatible OpenMP
    runtime already loaded in the process (PyTorch's libgomp, Intel's libiomp5, LLVM's libomp;
    ValueError if there is none): PyTorch keeps those threads spinning for about 10 ms after each
    operator, so rnnkern's threads would compete with them for the cores. "auto" takes "openmp"
    once such a runtime is loaded, except for 100-800 ms after calls there kept losing a thread
    to another process; else "rnnkern". Results are bitwise the same on either. See
    docs/design.md, "Threads in company".
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    _core.set_thread_runtime(name)


def thread_runtime() -> str:
    """The runtime setting: "auto", "rnnkern" or "openmp" (see set_thread_runtime)."""
    return str(_core.thread_runtime())


def thread_stats() -> dict[str, int]:
    """What the threads did since the process started, for diagnosing a slow program.

    team_calls: calls run by more than one thread; openmp_calls: of which on an OpenMP runtime's
    threads; taken_over: workers' shares that the caller did itself because the worker had not
    started in time (150 us into the call; 5 us in a forward or backward, whose workers can join
    late); shrunk: team calls that finished on the caller alone because a member was descheduled
    (it arrived at a step 100 us or more after the others); joined_late: workers taken over that
    then joined their call benched and asked to be let in at a step; started_alone: forward and
    backward calls on rnnkern's pool that started on the caller alone because a call shortly
    before had shrunk (for 1 ms after a shrink, doubling up to 16 ms while shrinks go on).
    """
    return {str(k): int(v) for k, v in _core.thread_stats().items()}




@contextlib.contextmanager
def numpy_blas_threads(n: int = 1) -> Iterator[None]:
    """Run NumPy's own BLAS (``@``, ``np.dot``) on n threads in the block.

    After a multi-threaded call, OpenBLAS keeps its workers spinning for about 0.1 s, on the
    cores that rnnkern's kernels want next. rnnkern's own layers already run their products on
    one BLAS thread (``rnnkern.nn.Linear``), so a loop of rnnkern layers needs nothing; wrap a
    loop in ``numpy_blas_threads(1)`` when your own code does large NumPy products between
    kernel calls. Uses threadpoolctl; the previous setting comes back on exit.
    """
    _check_thread_count(n)
    with _blas.controller().limit(limits=n, user_api="blas"):
        yield


def set_isa(name: str) -> None:
    """Run the kernels compiled for ``name`` ("scalar", "avx2" or "avx512"; the CPU must have it).

    The default is the best ISA of the CPU, or the environment variable RNNKERN_ISA at import.
    Packed weights made before keep running on their own ISA's kernels; the layers repack theirs.
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    _core.set_isa(name)
    _functional.isa_generation[0] += 1


def config() -> dict[str, Any]:
    """What runs: version, ISA in use, ISAs this CPU supports, threads, BLAS, and the path each
    precision (``precision=`` of the forwards) takes.

    rnnkern links no BLAS: every matrix product (input projection, recurrent steps, dx, dW) runs
    on its own packed, register-tiled kernels, so "blas" says so.
    """
    return {
        "version": __version__,
        "isa": _core.isa(),
        "supported_isas": _core.supported_isas().split(","),
        "threads": get_num_threads(),
        "thread_runtime": thread_runtime(),
        "blas": "none (every product runs on rnnkern's own packed kernels)",
        "precisions": {
            "float": f"{_core.isa()} float32/float64 products",
            "bf16": f"{_core.kernel_isa(1)} " + (
                "AVX512_BF16 vdpbf16ps: bf16 weights and operands" if _core.kernel_isa(1)
                == "avx512" else "emulated: bf16 weights widened to float32, operands rounded to "
                "bf16") + ", float32 sums",
            "int8": f"{_core.kernel_isa(2)} " + _INT8_PRODUCTS[_core.kernel_isa(2)]
                    + ": 7-bit int8 weight rows x u8 activation rows (zero point), exact int32 "
                      "sums, inference only",
        },
    }


# How each ISA's int8 kernels form the exact int32 sums (AMX tiles: no machine here has them).
_INT8_PRODUCTS = {"scalar": "int32", "avx2": "vpmaddubsw + vpmaddwd",
                  "avx512": "AVX512_VNNI vpdpbusd"}


def _isa_from_environment() -> None:
    """Apply RNNKERN_ISA (scalar, avx2 or avx512); a bad value fails the import, naming it."""
    name = os.environ.get("RNNKERN_ISA", "")
    if name:
        try:
            set_isa(name)
        except ValueError as e:
            raise ValueError(f"RNNKERN_ISA: {str(e).removeprefix('name: ')}") from None


_isa_from_environment()
