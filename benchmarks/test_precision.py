"""Smoke test of benchmarks/precision.py: it runs at a tiny size and reports every job and both
bf16 errors (the speed itself is measured by running the script, not here)."""
from __future__ import annotations

import json

import precision
import pytest


@pytest.mark.parametrize("train", [False, True])
def test_precision_benchmark_runs(capsys: pytest.CaptureFixture[str], train: bool) -> None:
    argv = ["--cells", "lstm,gru", "--shapes", "S1", "--size", "16", "--repeat", "1",
            "--min-time", "0.001", "--json"] + (["--train"] if train else [])
    precision.main(argv)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["train"] is train and len(out["rows"]) == 2
    for row in out["rows"]:
        assert set(row["ms"]) == {"torch float32", "torch bf16", "rnnkern float", "rnnkern bf16"}
        assert all(v > 0 for v in row["ms"].values())
        # bf16 is bf16: an error of about its precision, neither float32's nor garbage
        assert 1e-5 < row["error"]["rnnkern bf16"] < 5e-2
        assert row["error"]["torch bf16"] > 1e-5


def test_precision_benchmark_knows_s4_and_refuses_unknown_shapes(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert precision.SHAPES["S4"] == (64, 100, 512, 512)
    precision.main(["--cells", "lstm", "--shapes", "S4", "--size", "8", "--repeat", "1",
                    "--min-time", "0.001", "--int8", "--json"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"][0]
    assert (row["shape"], row["B"], row["T"]) == ("S4", 64, 100) and row["ms"]["rnnkern int8"] > 0
    with pytest.raises(SystemExit):
        precision.main(["--shapes", "S1,S9"])
