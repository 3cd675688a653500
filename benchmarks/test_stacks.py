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
