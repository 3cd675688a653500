"""variants.py: its kernel checks, every job of a tiny case, and one short run's table."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import variants

import rnnkern

# torch's own projection LSTM in float32 says it leaves oneDNN for its generic implementation
pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning")


def test_checks_and_jobs_run() -> None:
    variants.check_kernels(rnnkern, np)
    jobs = variants.jobs_for(3, 2, 8, 8, np, torch, rnnkern, int8=True)
    ours = [f"rnnkern {v} {j}" for v in ("plain", *variants.KERNEL_VARIANTS)
            for j in ("fwd", "fwdbwd")]
    ours += [f"rnnkern {v} int8" for v in ("plain", *variants.INT8_VARIANTS)]
    assert set(jobs) == {*ours, "torch plain fwd", "torch plain fwdbwd", "torch proj fwd",
                         "torch proj fwdbwd"}
    for job in jobs.values():
        job()


def test_int8_rows_in_a_short_run(capsys: pytest.CaptureFixture[str]) -> None:
    variants.main(["--shapes", "S1", "--repeat", "1", "--min-time", "0", "--int8"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith("S1") and " int8 " in line]
    assert [r[2] for r in rows] == ["plain", *variants.INT8_VARIANTS]
    assert all(float(r[3]) > 0 and r[4] == "(x" and r[5] == "float32" for r in rows)
