"""stacks.py: one tiny run of every case, its checks, table and JSON."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import stacks


def test_tiny_run_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "stacks.json"
    stacks.main(["--T", "3", "--size", "4", "--repeat", "1", "--min-time", "0", "--markdown",
                 "--json", str(out)])
    table = capsys.readouterr().out.splitlines()
    rows = [line for line in table if line.startswith("| LSTM") or line.startswith("| GRU")]
    assert len(rows) == len(stacks.CASES)
    assert rows[0].startswith("| LSTM B=1, 2 layers, bidirectional |")
    assert all(line.count("|") == 9 for line in rows)
    data = json.loads(out.read_text())
    assert (data["T"], data["I"], data["H"]) == (3, 4, 4) and data["threads"] >= 1
    assert len(data["rows"]) == len(stacks.CASES)
    for row in data["rows"]:
        assert set(row["ms"]) == set(stacks.JOBS) and min(row["ms"].values()) > 0
        assert set(row["ratio_to_torch"]) == {j for j in stacks.JOBS if j.startswith("rnnkern")}
        assert row["dropin_over_nn"]["training"] == pytest.approx(
            row["ms"]["rnnkern.torch training"] / row["ms"]["rnnkern.nn training"])


def test_bad_case_index_is_refused() -> None:
    with pytest.raises(SystemExit):
        stacks.main(["--cases", "5"])


def test_lowp_adds_bf16_and_int8_inference_with_their_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "stacks.json"
    stacks.main(["--T", "5", "--size", "8", "--repeat", "1", "--min-time", "0", "--markdown",
                 "--lowp", "--cases", "0", "4", "--json", str(out)])
    table = capsys.readouterr().out.split("\n\n")[-1].splitlines()
    assert table[0].startswith("| model, T=5, I=H=8, inference | torch float32 | torch bf16 |")
    assert len(table) == 2 + 2 and all(line.count("|") == 8 for line in table)
    for row in json.loads(out.read_text())["rows"]:
        assert set(row["ms"]) == set(stacks.JOBS) | set(stacks.LOWP_JOBS)
        errors = row["errors"]
        assert set(errors) == set(stacks.LOWP_JOBS)
        # bf16 operands: about 2^-8 relative per product; int8: 7-bit weights, u8 activations
        assert 0 < errors["rnnkern.nn bf16 inference"] < 2e-2
        assert 0 < errors["rnnkern.nn int8 inference"] < 5e-2
        assert errors["rnnkern.torch int8 inference"] == errors["rnnkern.nn int8 inference"]
