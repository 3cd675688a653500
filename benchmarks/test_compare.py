"""compare.py: its ratios, its table and one tiny end-to-end run."""
from __future__ import annotations

import compare
import peers
import pytest

S = peers.SHAPES["S1"]


def _row(seconds: dict[tuple[str, str], float]) -> compare.Row:
    return compare.Row("lstm", S, seconds, peers.flops("lstm", S))


def test_ratios_and_rate() -> None:
    row = _row({("rnnkern", "fwd"): 1e-3, ("torch", "fwd"): 4e-3, ("ort", "fwd"): 2e-3,
                ("rnnkern", "fwdbwd"): 3e-3, ("torch", "fwdbwd"): 12e-3})
    assert row.fwd_ratio() == pytest.approx(0.5)  # against the faster peer, ORT
    assert row.fwdbwd_ratio() == pytest.approx(0.25)
    assert row.gflops() == pytest.approx(peers.flops("lstm", S) / 1e-3 / 1e9)
    peers_only = _row({("torch", "fwd"): 4e-3, ("ort", "fwd"): 2e-3})
    assert peers_only.fwd_ratio() is None and peers_only.gflops() is None


def test_table_leaves_out_empty_columns() -> None:
    rows = [_row({("torch", "fwd"): 4e-3, ("ort", "fwd"): 2.5e-4, ("torch", "fwdbwd"): 0.123})]
    text = compare.format_table(rows, 300.0, markdown=False)
    assert "rnnkern" not in text and "torch fwd+bwd" in text
    assert text.splitlines()[1].split()[-3:] == ["4.00", "0.250", "123"]
    md = compare.format_table(rows, 300.0, markdown=True).splitlines()
    assert md[0] == "| cell | shape (B, T, I, H) | torch fwd | ORT fwd | torch fwd+bwd |"
    assert md[1] == "|---|---|---:|---:|---:|"
    assert md[2] == "| lstm | S1 (1, 100, 256, 256) | 4.00 | 0.250 | 123 |"


def test_main_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--threads", str(peers.default_threads()), "--cells", "rnn,gru", "--shapes", "O2",
            "--repeat", "2", "--min-time", "0", "--markdown"]
    assert compare.main(argv) == 0
    out = capsys.readouterr().out
    assert "GFLOP/s" in out.splitlines()[2]
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[1:]] == ["| rnn", "| gru"]
    assert all(line.count("|") == 12 for line in table)  # every column measured


def test_main_rejects_unknown_names() -> None:
    with pytest.raises(SystemExit, match="lstmx"):
        compare.main(["--cells", "lstmx"])
    with pytest.raises(SystemExit, match="S9"):
        compare.main(["--shapes", "S9"])
