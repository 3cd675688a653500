"""company.py: its ratios and targets, one tiny run in every condition with its checks and
tables, and the busy process's lifetime."""
from __future__ import annotations

import json
from pathlib import Path

import company
import numpy as np
import peers
import pytest

TINY = peers.Shape("tiny", B=2, T=5, I=8, H=8)
TINY_MODEL = {"vocab": 20, "emb": 4, "hidden": 6, "classes": 3}


def _row(condition: str, rnnkern: float, torch: float, ort: float,
         back_to_back: float | None) -> company.FwdRow:
    return company.FwdRow(condition, "gru", TINY, {"rnnkern": rnnkern, "torch": torch, "ort": ort},
                          {"rnnkern": 1, "torch": 1, "ort": 1}, 0.0, back_to_back)


def test_ratios_and_targets() -> None:
    after = _row("after-torch", 1.4e-3, 5e-3, 2e-3, 1e-3)
    assert after.own_ratio() == pytest.approx(1.4) and after.peer_ratio() == pytest.approx(0.7)
    assert after.target() == pytest.approx((1.4, 1.3)) and after.met() is False
    assert _row("after-ort", 1.2e-3, 5e-3, 2e-3, 1e-3).met() is True
    busy = _row("busy", 2.3e-3, 4e-3, 2e-3, 1e-3)  # against the faster peer, not its own time
    assert busy.target() == pytest.approx((1.15, 1.2)) and busy.met() is True
    assert _row("back-to-back", 1e-3, 5e-3, 2e-3, 1e-3).target() is None
    assert _row("after-ort", 1e-3, 5e-3, 2e-3, None).met() is None  # no back-to-back measured
    case = company.DROPIN_CASES[0]
    assert company.DropinRow("lstm", case, {"torch": 10.0, "rnnkern": 8.9}).met()
    assert not company.DropinRow("gru", case, {"torch": 10.0, "rnnkern": 7.1}).met()
    n, missed = company.missed_targets([after, busy], [company.DropinRow(
        "gru", case, {"torch": 10.0, "rnnkern": 7.1})])
    assert n == 3 and len(missed) == 2 and missed[0].startswith("after-torch gru tiny 1.40x")


def test_measure_every_condition(monkeypatch: pytest.MonkeyPatch) -> None:
    checks: list[bool] = []
    check_result = peers.check_result

    def spy(got: peers.Result, want: peers.Result, problem: peers.Problem, *,
            grads: bool) -> list[str]:
        errors = check_result(got, want, problem, grads=grads)
        checks.append(not errors)
        return errors

    monkeypatch.setattr(peers, "check_result", spy)
    conditions = list(company.CONDITIONS)
    fwd = company.measure_forward(["gru"], [TINY], conditions, repeat=1, min_time=0.0,
                                  pause=0.0)
    # each peer checked against the float64 reference before timing and after each condition
    assert checks == [True] * len(company.FWD_PEERS) * (1 + len(conditions))
    assert [r.condition for r in fwd] == conditions
    for r in fwd:
        assert set(r.seconds) == set(company.FWD_PEERS) and min(r.seconds.values()) > 0
        assert r.back_to_back == fwd[0].seconds["rnnkern"]
        assert (r.busy_share is not None) == (r.condition == "busy")
    dropin = company.measure_dropin(["lstm"], [company.DropinCase("tiny", 2, 5, True)],
                                    model=TINY_MODEL, repeat=1, min_time=0.0)
    assert dropin[0].seconds["torch"] > 0 and dropin[0].seconds["rnnkern"] > 0
    text = company.format_report(fwd, dropin, markdown=True)
    for cond, what in company.CONDITIONS.items():
        assert f"**{cond}: {what};" in text
    table = [line for line in text.splitlines() if line.startswith("| gru")]
    assert len(table) == len(conditions)
    assert "| lstm | tiny |" in text
    assert "targets met: " in text.splitlines()[-1]


def test_measure_rejects_a_wrong_result(monkeypatch: pytest.MonkeyPatch) -> None:
    forward = peers.FunctionalPeer.forward

    def off(self: peers.FunctionalPeer) -> peers.Result:
        r = forward(self)
        if self.name != "rnnkern":  # the float64 oracle is a FunctionalPeer too
            return r
        return peers.Result(r.y + np.float32(0.1), r.h_n, r.c_n)

    monkeypatch.setattr(peers.FunctionalPeer, "forward", off)
    with pytest.raises(AssertionError, match="rnnkern rnn tiny.*before timing"):
        company.measure_forward(["rnn"], [TINY], ["back-to-back"], repeat=1, min_time=0.0)


def test_busy_process_runs_and_is_killed_on_error() -> None:
    with pytest.raises(KeyboardInterrupt):
        with company.busy_process() as proc:
            cpu = company.cpu_seconds(proc.pid)
            assert proc.poll() is None and cpu > 0
            raise KeyboardInterrupt
    assert proc.poll() is not None  # killed and waited for


def test_main_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "company.json"
    assert company.main(["--cells", "rnn", "--shapes", "O2", "--conditions",
                         "back-to-back,after-ort", "--repeat", "1", "--min-time", "0",
                         "--no-dropin", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("machine: ") and "threads: rnnkern " in text
    data = json.loads(out.read_text(encoding="utf-8"))
    assert [r["condition"] for r in data["forward"]] == ["back-to-back", "after-ort"]
    assert data["forward"][1]["own_ratio"] == pytest.approx(
        data["forward"][1]["ms"]["rnnkern"] / data["forward"][0]["ms"]["rnnkern"])
    assert data["dropin"] == [] and data["targets"]["measured"] == 1


def test_main_rejects_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    for flag, bad in (("--cells", "lstmx"), ("--shapes", "S9"), ("--conditions", "noisy")):
        with pytest.raises(SystemExit):
            company.main([flag, bad])
        assert f"{flag}: unknown {bad!r}" in capsys.readouterr().err
