"""Timing helpers for compare.py: interleaved (round-robin) repetitions, the sgemm rate and a
description of the machine.

Importing this module does not import NumPy, so compare.py can read `default_threads()` and set
NumPy's BLAS thread count in the environment before NumPy loads.
"""
from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "cpu_model",
    "default_threads",
    "median_seconds",
    "relative_spread",
    "round_robin",
    "sgemm_flops",
    "sgemm_gflops",
    "sgemm_operands",
]


def default_threads() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def round_robin(jobs: Mapping[str, Callable[[], object]], *, repeat: int, min_time: float,
                pause: float = 0.1, before: Mapping[str, Callable[[], object]] | None = None,
                per_call: bool = False) -> dict[str, list[float]]:
    """Seconds per call of each job, `repeat` samples each, taken in turn so that machine noise
    hits every job alike.

    One untimed warm-up call per job, then one timed call that sets how many calls a sample
    averages over (enough to last `min_time`). Round r starts at job r (mod the job count), so
    no job always follows the same one; `pause` seconds before each sample let the previous
    job's spinning worker threads go idle. The garbage collector is off while timing.

    With `per_call`, each call of a sample is timed on its own and a job's list holds every
    call's seconds (repeat * its calls per sample) instead of one mean per sample.
    `before[k]` (only with `per_call`) runs untimed right before every call of job k.
    """
    if repeat < 1:
        raise ValueError(f"repeat: expected >= 1, got {repeat}")
    if before and not per_call:
        raise ValueError("before: needs per_call=True (it must stay out of the timed calls)")
    keys = list(jobs)
    pres = {k: (before or {}).get(k, lambda: None) for k in keys}
    number = {}
    for k in keys:
        pres[k]()
        jobs[k]()  # warm-up
        pres[k]()
        t0 = time.perf_counter()
        jobs[k]()
        number[k] = max(1, math.ceil(min_time / max(time.perf_counter() - t0, 1e-9)))
    samples: dict[str, list[float]] = {k: [] for k in keys}
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeat):
            s = r % len(keys)
            for k in keys[s:] + keys[:s]:
                fn, n, pre = jobs[k], number[k], pres[k]
                time.sleep(pause)
                pre()
                fn()  # untimed: wakes this job's threads, as in back-to-back use
                if per_call:
                    for _ in range(n):
                        pre()
                        t0 = time.perf_counter()
                        fn()
                        samples[k].append(time.perf_counter() - t0)
                    continue
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                samples[k].append((time.perf_counter() - t0) / n)
    finally:
        if was_enabled:
            gc.enable()
    return samples


def median_seconds(samples: Mapping[str, list[float]]) -> dict[str, float]:
    """The median of each job's samples."""
    return {k: statistics.median(v) for k, v in samples.items()}


def relative_spread(samples: list[float]) -> float:
    """The interquartile range of the samples over their median: how noisy the timing was."""
    if len(samples) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return (q3 - q1) / statistics.median(samples)


def sgemm_operands(n: int = 1024, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two float32 (n, n) matrices U(-1, 1)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1.0, 1.0, (n, n)).astype(np.float32)  # (n, n)
    b = rng.uniform(-1.0, 1.0, (n, n)).astype(np.float32)  # (n, n)
    return a, b


def sgemm_flops(n: int) -> int:
    """Flops of an (n, n) @ (n, n) product."""
    return 2 * n ** 3


def sgemm_gflops(n: int = 1024, *, repeat: int = 11, min_time: float = 0.05) -> float:
    """NumPy's float32 matmul rate in GFLOP/s (median of `repeat` samples) with NumPy's BLAS
    threads as they are set (compare.py sets them through the environment before importing
    NumPy)."""
    import numpy as np
    a, b = sgemm_operands(n)
    out = np.empty((n, n), np.float32)  # (n, n)
    t = median_seconds(round_robin({"sgemm": lambda: np.matmul(a, b, out=out)},
                                   repeat=repeat, min_time=min_time))["sgemm"]
    return sgemm_flops(n) / t / 1e9


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
