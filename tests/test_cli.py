"""Every `rnnkern` command end to end on tiny settings, in process and once as `python -m`."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import rnnkern
from rnnkern import data
from rnnkern.cli import build_parser, main
from rnnkern.models import CharLM, Seq2Seq, load_checkpoint

TEXT = "the quick brown fox jumps over the lazy dog.\n" * 40


def test_dogs_learns(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dogs"]) == 0
    out = capsys.readouterr().out
    assert "learned: d,o,g -> o,g,s" in out
    assert "step  loss" in out
    for line in ("d   ->     o", "o   ->     g", "g   ->     s"):
        assert line in out


def test_train_char_and_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text_file = tmp_path / "fox.txt"
    text_file.write_text(TEXT)
    ckpt = tmp_path / "fox.npz"
    rc = main(["train-char", str(text_file), "--cell", "gru", "--hidden", "16", "--embed", "8",
               "--seq-len", "10", "--batch", "4", "--steps", "12", "--sample-every", "6",
               "--sample-length", "20", "--out", str(ckpt), "--no-progress", "--val-chars",
               "300", "--seed", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.count("--- sample at step") == 3  # steps 6 and 12, and the final one
    assert "validation loss" in out and "unigram baseline" in out
    model, meta = load_checkpoint(ckpt)
    assert isinstance(model, CharLM) and model.config["cell"] == "gru"
    assert meta["steps"] == 12 and set(meta["vocab"]) == set(TEXT)
    assert meta["val_loss"] < np.log(len(meta["vocab"])) + 0.5

    assert main(["sample", str(ckpt), "--length", "30", "--prime", "the ", "--seed", "0"]) == 0
    sample = capsys.readouterr().out
    assert sample.startswith("the ") and len(sample) == len("the ") + 30 + 1
    assert set(sample[:-1]) <= set(TEXT)
    assert main(["sample", str(ckpt), "--length", "30", "--prime", "the ", "--seed", "0"]) == 0
    assert capsys.readouterr().out == sample  # seeded: reproducible


def test_train_char_in_bf16(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--precision bf16: the recurrent layer runs bf16 products, the checkpoint remembers it and
    sampling from it runs in bf16 too; the first loss equals float32's within bf16's rounding."""
    text_file = tmp_path / "fox.txt"
    text_file.write_text(TEXT)
    losses = {}
    for precision in ("float", "bf16"):
        ckpt = tmp_path / f"fox-{precision}.npz"
        assert main(["train-char", str(text_file), "--hidden", "16", "--embed", "8",
                     "--seq-len", "10", "--batch", "4", "--steps", "6", "--sample-every", "0",
                     "--out", str(ckpt), "--no-progress", "--val-chars", "300", "--seed", "1",
                     "--precision", precision]) == 0
        capsys.readouterr()
        model, meta = load_checkpoint(ckpt)
        assert model.config["precision"] == precision
        assert model.rnn.precision == precision
        losses[precision] = meta["val_loss"]
        assert main(["sample", str(ckpt), "--length", "10", "--seed", "0"]) == 0
    assert losses["bf16"] != losses["float"]
    assert abs(losses["bf16"] - losses["float"]) < 0.02 * losses["float"]


def test_train_char_layer_norm_and_eval_every(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """--layer-norm trains a layer-normalized LSTM and the checkpoint keeps it; --eval-every
    prints the validation loss along the way, the last one the final loss; not with a GRU."""
    text_file = tmp_path / "fox.txt"
    text_file.write_text(TEXT)
    ckpt = tmp_path / "fox.npz"
    args = ["train-char", str(text_file), "--hidden", "16", "--embed", "8", "--seq-len", "10",
            "--batch", "4", "--steps", "6", "--sample-every", "0", "--out", str(ckpt),
            "--no-progress", "--val-chars", "300", "--seed", "1", "--layer-norm"]
    assert main([*args, "--eval-every", "3"]) == 0
    out = capsys.readouterr().out
    assert "(lstm layer-norm, H = 16, 1 layer(s))" in out
    evals = re.findall(r"^step (\d+): validation loss (\d+\.\d+) nats/char \((\d+\.\d+) "
                       r"bits/char\); median step \d+\.\d ms over the last 3$", out, re.M)
    assert [int(e[0]) for e in evals] == [3, 6]
    model, meta = load_checkpoint(ckpt)
    assert isinstance(model, CharLM) and model.config["layer_norm"] is True
    assert model.rnn.layer_norm and "rnn.ln_cell_l0" in model.params
    assert float(evals[-1][1]) == pytest.approx(meta["val_loss"], abs=1e-4)
    assert float(evals[-1][2]) == pytest.approx(meta["val_loss"] / np.log(2), abs=1e-4)
    assert main(["sample", str(ckpt), "--length", "10", "--seed", "0"]) == 0
    capsys.readouterr()

    assert main([*args, "--cell", "gru"]) == 2
    assert "train-char: error: layer_norm: only cell='lstm'" in capsys.readouterr().err
    ckpt.unlink()
    assert main([*args, "--eval-precision", "int8"]) == 2  # refused before training
    assert "error: ln_gates: layer norm has no int8 kernels" in capsys.readouterr().err
    assert not ckpt.exists()


def test_train_char_default_corpus_minutes(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["train-char", "--hidden", "8", "--embed", "4", "--seq-len", "8", "--batch", "2",
               "--minutes", "0.002", "--max-chars", "3000", "--val-chars", "100",
               "--sample-every", "0", "--sample-length", "5", "--out", "", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "standard library: 3,000 characters" in out
    assert not list(tmp_path.iterdir())


def test_sample_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "m.npz"
    CharLM(3, hidden_size=4, embed_dim=2).save(ckpt, vocab="ab\n")
    assert main(["sample", str(ckpt), "--prime", "abz", "--length", "3"]) == 2
    assert "prime: token 'z' is not in the vocabulary" in capsys.readouterr().err
    Seq2Seq(5, 5, hidden_size=4).save(tmp_path / "s.npz")
    assert main(["sample", str(tmp_path / "s.npz")]) == 2
    assert "not a character model" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "missing.npz")]) == 2
    with pytest.raises(SystemExit):
        main(["train-char", "--hidden", "0"])


@pytest.mark.parametrize("content", [b"some notes\n", pickle.dumps({"w": [1.0]}), b""],
                         ids=["text", "pickle", "empty"])
def test_sample_of_a_file_that_is_not_a_checkpoint(tmp_path: Path, content: bytes,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """One line saying what the file is not, exit status 2; never numpy's allow_pickle advice."""
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    assert main(["sample", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "allow_pickle" not in captured.err
    assert captured.err.startswith(f"rnnkern sample: error: path: {str(path)!r} is not an "
                                   f"rnnkern checkpoint")


def _train_char_args(tmp_path: Path, ckpt: str, *more: str) -> list[str]:
    """A tiny train-char run on TEXT (written to tmp_path)."""
    text_file = tmp_path / "fox.txt"
    text_file.write_text(TEXT)
    return ["train-char", str(text_file), "--hidden", "8", "--embed", "4", "--seq-len", "8",
            "--batch", "2", "--val-chars", "100", "--sample-every", "0", "--sample-length", "5",
            "--out", ckpt, "--seed", "2", *more]


def test_ctrl_c_in_train_char_saves_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """KeyboardInterrupt in the loop: the trained state is saved (the message says where), no
    validation, exit status 130; without --out it says that nothing was saved."""
    calls = []
    step = CharLM.loss_and_backward

    def interrupted_step(self: CharLM, *args: object) -> object:
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return step(self, *args)

    monkeypatch.setattr(CharLM, "loss_and_backward", interrupted_step)
    monkeypatch.chdir(tmp_path)
    args = _train_char_args(tmp_path, "run.npz", "--steps", "100", "--no-progress")
    assert main(args) == 130
    out = capsys.readouterr().out
    assert "\ninterrupted after 4 steps in " in out and "\nvalidation loss" not in out
    assert f"checkpoint saved to {tmp_path / 'run.npz'}\n" in out
    model, meta = load_checkpoint(tmp_path / "run.npz")
    assert meta["steps"] == 4 and meta["interrupted"] and meta["val_loss"] is None
    init = CharLM(**model.config)  # the config's seed: the initialization before training
    assert any(not np.array_equal(p, init.params[k]) for k, p in model.params.items())

    calls.clear()
    args[args.index("--out") + 1] = ""
    assert main(args) == 130
    assert "no checkpoint saved (--out '')" in capsys.readouterr().out


def _env_with_package() -> dict[str, str]:
    """os.environ with PYTHONPATH leading to the rnnkern under test."""
    package_root = str(Path(rnnkern.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


def test_sigint_to_train_char_saves_and_exits_130(tmp_path: Path) -> None:
    """A real Ctrl-C (SIGINT) to `python -m rnnkern train-char`: status 130, no traceback, and
    the checkpoint it names loads."""
    args = _train_char_args(tmp_path, str(tmp_path / "run.npz"), "--steps", "100000000",
                            "--no-progress")
    proc = subprocess.Popen(  # SIGINT at its default (a background shell may have ignored it)
        [sys.executable, "-m", "rnnkern", *args], env=_env_with_package(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("corpus: ")  # the model exists: training
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"checkpoint saved to {tmp_path / 'run.npz'}" in out
    steps = int(re.search(r"interrupted after (\d+) steps", out).group(1))  # type: ignore[union-attr]
    model, meta = load_checkpoint(tmp_path / "run.npz")
    assert isinstance(model, CharLM) and meta["steps"] == steps and meta["interrupted"]


def test_progress_bar_under_minutes_in_a_log(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """--minutes: the bar counts seconds of the budget and shows the time left; stderr is not a
    terminal here, so it is drawn a few times, not once per step."""
    assert main(_train_char_args(tmp_path, "", "--minutes", "0.02")) == 0
    captured = capsys.readouterr()
    steps = int(re.search(r"trained (\d+) steps", captured.out).group(1))  # type: ignore[union-attr]
    assert steps >= 5  # enough to tell a per-step bar from this one
    draws = [d for d in re.split(r"[\r\n]", captured.err) if d.strip()]
    assert len(draws) <= 3, draws
    assert re.search(rf"100%\|.*\| 1/1 s \[00:00 left, step={steps}, loss=", draws[-1]), draws


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """Every command's --help gives each option's default (unless None, False or '', where the
    help says what happens)."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for name, sub in commands.choices.items():
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for action in sub._actions:
            if action.default in (None, False, "", argparse.SUPPRESS) or not action.option_strings:
                continue
            entry = text[text.index(f" {action.option_strings[-1]} "):]
            entry = re.split(r" --?[a-z]", entry[3:])[0]  # up to the next option
            assert f"(default: {action.default})" in entry, (name, action.option_strings, entry)
            checked += 1
    assert checked > 40


def test_train_seq2seq(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "s2s.npz"
    rc = main(["train-seq2seq", "--max-value", "99", "--hidden", "16", "--embed", "8",
               "--steps", "10", "--batch", "8", "--eval-every", "5", "--test-size", "20",
               "--beam", "2", "--beam-test-size", "4", "--out", str(ckpt)])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.count("held-out exact match") == 3  # steps 5, 10 and the final report
    assert "greedy" in out and "beam 2" in out
    model, meta = load_checkpoint(ckpt)
    assert isinstance(model, Seq2Seq) and meta["max_value"] == 99


def test_gradflow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_png = tmp_path / "g.png"
    assert main(["gradflow", "--out", str(out_png), "--length", "8", "--train-steps", "2",
                 "--hidden", "6", "--batch", "4"]) == 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    for name in ("RNN (init)", "RNN (after 2 steps)", "LSTM (init)", "LSTM (after 2 steps)"):
        assert name in out


def test_gradflow_without_matplotlib(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """No matplotlib: one line naming the plot extra, exit status 2, before any computing."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert main(["gradflow", "--length", "8", "--train-steps", "2", "--hidden", "6"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ('rnnkern gradflow: error: this command needs matplotlib, which is '
                            'not installed: pip install "rnnkern[plot]"\n')


def test_longrange(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["longrange", "--lengths", "3,5", "--steps", "3", "--hidden", "6",
                 "--test-size", "20", "--cells", "rnn,gru,lstm"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [r[0] for r in rows] == ["3", "5"]
    assert all(len(r) == 4 and all(v.endswith("%") for v in r[1:]) for r in rows)


def test_jumble(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jumble", "--steps", "3", "--hidden", "8", "--embed", "8", "--batch", "8",
                 "--eval-every", "2", "--show", "2", "--test-size", "40", "--json"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    result = json.loads(lines[-1])
    assert set(result) == {"bag_of_words_accuracy", "rnn_accuracy", "lstm_accuracy",
                           "test_sentences"}
    assert result["test_sentences"] == 40
    assert all(0.0 <= result[k] <= 1.0 for k in result if k.endswith("accuracy"))
    assert result["bag_of_words_accuracy"] == 0.5  # each sentence as written and jumbled
    assert out.count("step     2  loss") == 3  # one progress line per model
    verdicts = [line.split() for line in lines if line.startswith(("  jumbled ", "  written "))]
    assert len(verdicts) == len(data.LECTURE_JUMBLED) + len(data.LECTURE_WRITTEN) + 2 * 2
    shown = {" ".join(v[4:]): v[:4] for v in verdicts}
    assert shown["policy is the best honesty"][0] == "jumbled"
    assert shown["honesty is the best policy"][0] == "written"
    assert all(re.fullmatch(r"[01]\.\d\d", p) for v in verdicts for p in v[1:4])
    written, jumbled = verdicts[-4], verdicts[-3]  # a held-out sentence and its jumble
    assert (written[0], jumbled[0]) == ("written", "jumbled")
    assert sorted(written[4:]) == sorted(jumbled[4:]) and written[1] == jumbled[1]  # BoW
    assert re.search(r"^wall time \d+ s \(budget 120 s\)$", out, re.M)


def test_attention(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_png = tmp_path / "attention.png"
    assert main(["attention", "--steps", "2", "--hidden", "8", "--embed", "4", "--batch", "4",
                 "--min-len", "5", "--max-len", "12", "--letters", "5", "--test-size", "12",
                 "--eval-every", "1", "--eval-size", "3", "--plot", str(out_png),
                 "--json"]) == 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    result = json.loads(out.splitlines()[-1])
    assert set(result) == {"exact_match_without_attention", "exact_match_with_attention",
                           "min_input_length"}
    assert 5 <= result["min_input_length"] <= 12
    assert "held-out exact match by input length" in out
    assert out.count(", 2 steps, ") == 2  # each model its steps
    assert re.search(r"^wall time \d+ s \(budget 180 s\)$", out, re.M)
    rows = re.findall(r"^ +(\d+)-(\d+) +(\d+) ", out, re.M)
    assert [(int(a), int(b)) for a, b, _ in rows] == [(5, 9), (10, 12)]
    assert sum(int(n) for *_, n in rows) == 12


def test_attention_plot_needs_matplotlib(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Without matplotlib, --plot fails at once with one line, before any training."""
    def missing(what: str) -> None:
        raise ImportError(f"{what} needs matplotlib: pip install rnnkern[plot]")

    monkeypatch.setattr("rnnkern.diagnostics.require_matplotlib", missing)
    assert main(["attention", "--plot", "a.png", "--steps", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("rnnkern attention: error: --plot needs matplotlib: "
                            "pip install rnnkern[plot]\n")


def test_python_dash_m() -> None:
    """`python -m rnnkern` runs the same command line in a fresh interpreter."""
    package_root = str(Path(rnnkern.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "rnnkern", "dogs", "--hidden", "4"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "learned: d,o,g -> o,g,s" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "rnnkern", "no-such-command"], env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def test_numpy_blas_threads_limits_and_restores() -> None:
    """NumPy's BLAS runs on n threads inside the block and as before after it (also after an
    exception); bad n raises naming it."""
    before = _blas_threads()
    assert before, "NumPy's BLAS is not visible to threadpoolctl"
    with rnnkern.numpy_blas_threads():
        assert _blas_threads() == [1] * len(before)
        with rnnkern.numpy_blas_threads(2):
            assert _blas_threads() == [2] * len(before)
        assert _blas_threads() == [1] * len(before)
    assert _blas_threads() == before
    with pytest.raises(RuntimeError, match="inside"):
        with rnnkern.numpy_blas_threads(1):
            raise RuntimeError("inside")
    assert _blas_threads() == before
    with pytest.raises(TypeError, match="^n: expected an int"):
        with rnnkern.numpy_blas_threads(1.0):  # type: ignore[arg-type]
            pass
    with pytest.raises(ValueError, match="^n: expected n >= 1"):
        with rnnkern.numpy_blas_threads(0):
            pass


def test_linear_runs_its_products_on_one_blas_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """rnnkern.nn.Linear's NumPy products (forward; weight gradient and dx) run on one BLAS
    thread, so OpenBLAS's workers never spin on the kernels' cores; the count comes back."""
    seen: list[list[int]] = []
    real = rnnkern._blas.one_thread

    @contextlib.contextmanager
    def spy() -> Iterator[None]:
        with real():
            seen.append(_blas_threads())
            yield

    monkeypatch.setattr(rnnkern._blas, "one_thread", spy)
    before = _blas_threads()
    lin = rnnkern.nn.Linear(8, 4, seed=0)
    y = lin(np.ones((3, 8), np.float32))
    lin.backward(np.ones_like(y))
    assert seen == [[1] * len(before)] * 2
    assert _blas_threads() == before


def test_one_blas_thread_from_many_python_threads() -> None:
    """Blocks open in 8 Python threads at once, overlapping: the count from before comes back
    once all have closed (the setting is global to the process), and a block opened after them
    still gives one thread."""
    before = _blas_threads()

    def work(i: int) -> None:
        for k in range(20):
            with rnnkern._blas.one_thread():
                time.sleep(0.0002 * ((i + k) % 3))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rnnkern._blas._depth == 0
    assert _blas_threads() == before
    with rnnkern._blas.one_thread():
        assert _blas_threads() == [1] * len(before)
    assert _blas_threads() == before
