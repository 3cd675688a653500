"""cells.py: its checks (the loops' last states and the training loops' weight gradients against
torch's, at both batch sizes) and every job once."""
from __future__ import annotations

import cells
import pytest


@pytest.mark.parametrize("B", [1, 32])
def test_checks_and_jobs_run(B: int) -> None:
    jobs = cells.jobs_for(B)
    assert {num for _, num, _, _ in cells.RATIOS} | {den for _, _, den, _ in cells.RATIOS} <= set(
        jobs)
    for job in jobs.values():
        job()
