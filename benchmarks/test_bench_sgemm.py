"""The machine's yardstick in the same run as the cell benchmarks: NumPy's float32 matmul of
1024^3 (GFLOP/s = 2.147 / median seconds)."""
from __future__ import annotations

import numpy as np
import timing
from pytest_benchmark.fixture import BenchmarkFixture

N = 1024


def test_bench_sgemm(benchmark: BenchmarkFixture) -> None:
    a, b = timing.sgemm_operands(N)  # (N, N) each, float32
    out = np.empty((N, N), np.float32)  # (N, N)
    benchmark.group = "sgemm"
    benchmark.extra_info.update(n=N, gflop=timing.sgemm_flops(N) / 1e9)
    got = benchmark(np.matmul, a, b, out=out)
    want = a.astype(np.float64) @ b.astype(np.float64)  # (N, N)
    # float32 sums of N products of |.| <= 1: error well below 1e-6 * N
    assert np.max(np.abs(got - want)) <= 1e-6 * N
