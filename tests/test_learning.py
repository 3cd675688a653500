"""The learning claims of the lecture and the README, each a short training run (marked slow).

They run in CI; deselect them locally with ``-m "not slow"``. Each stays under ~2 minutes on
2 cores with the NumPy reference and is much faster on the compiled kernels.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rnnkern import data, diagnostics, optim
from rnnkern.cli import main
from rnnkern.models import BagOfWords, SequenceClassifier

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def _percentages(line: str) -> list[float]:
    return [float(v) / 100 for v in re.findall(r"([0-9.]+)%", line)]


def test_charlm_beats_unigram_on_default_corpus(capsys: pytest.CaptureFixture[str]) -> None:
    """A short run on the stdlib corpus goes well below the unigram model's validation loss."""
    assert main(["train-char", "--hidden", "128", "--steps", "150", "--seq-len", "64",
                 "--batch", "32", "--lr", "3e-3", "--max-chars", "300000", "--val-chars",
                 "20000", "--sample-every", "0", "--out", "", "--no-progress"]) == 0
    out = capsys.readouterr().out
    found = re.search(r"validation loss ([0-9.]+) nats.*unigram baseline ([0-9.]+) nats", out)
    assert found, out
    val, unigram = float(found.group(1)), float(found.group(2))
    assert val < unigram - 0.7, out


def test_seq2seq_reaches_95_percent(capsys: pytest.CaptureFixture[str]) -> None:
    """Numbers in words -> digits: >= 95% exact match on held-out numbers."""
    assert main(["train-seq2seq", "--steps", "900", "--eval-every", "100", "--stop-at", "0.97",
                 "--test-size", "400", "--beam-test-size", "100"]) == 0
    out = capsys.readouterr().out
    final = [line for line in out.splitlines() if line.startswith("held-out exact match after")]
    greedy, beam = _percentages(final[0])
    assert greedy >= 0.95 and beam >= 0.95, out


def test_longrange_lstm_solves_where_rnn_is_at_chance(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["longrange", "--lengths", "10,100", "--test-size", "1000"]) == 0
    rows = {line.split()[0]: _percentages(line)
            for line in capsys.readouterr().out.splitlines()[2:]}
    rnn10, lstm10 = rows["10"]
    rnn100, lstm100 = rows["100"]
    assert rnn10 >= 0.95 and lstm10 >= 0.95  # short range: both learn it
    assert lstm100 >= 0.95  # long range: the LSTM still does
    assert abs(rnn100 - 0.5) <= 0.06  # the vanilla RNN is at chance


def test_gradient_vanishes_for_rnn_not_lstm() -> None:
    """Across 60 steps the RNN's gradient falls by > 10^6, the (open-gated) LSTM's by < 10^2."""
    x, y = data.longrange_batch(np.random.default_rng(0), 16, 60)
    ratios = {}
    for cell, bias in (("rnn", 0.0), ("lstm", 5.0)):
        model = SequenceClassifier(12, 2, cell=cell, forget_bias=bias, seed=0)
        _, dh_last = model.loss_and_backward(x, y)
        norms = diagnostics.gradient_flow(model.rnn, model.embed(x, training=False),
                                          dy_last=dh_last)
        ratios[cell] = norms[1] / norms[-1]
        assert np.all(np.diff(np.log(norms[1:])) > -5)  # no single step kills it
    assert ratios["rnn"] < 1e-6
    assert ratios["lstm"] > 1e-2


def test_same_loss_as_torch() -> None:
    """The same CharLM in PyTorch (same init, data, Adam, clipping) follows the same losses."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "charlm_vs_torch.py"), "--steps", "40",
         "--hidden", "64", "--seq-len", "32", "--batch", "16", "--max-chars", "100000",
         "--val-chars", "5000", "--log-every", "0"],
        capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: [float(v.replace(",", "")) for v in line.split()[1:]]
            for line in done.stdout.splitlines() if line.startswith(("rnnkern ", "torch "))}
    ours, theirs = rows["rnnkern"], rows["torch"]
    assert ours[0] == pytest.approx(theirs[0], abs=0.02)  # training loss
    assert ours[1] == pytest.approx(theirs[1], abs=0.02)  # validation loss


def test_jumble_recurrent_models_see_order_bag_of_words_cannot() -> None:
    """Held out: an LSTM tells written from jumbled sentences; the bag of words is at chance."""
    task = data.JumbledSentences(test_size=500)
    ids, kinds, _ = task.pairs(np.random.default_rng(1), task.test)
    x, lengths = data.pad_sequences(ids, task.PAD)
    labels = (kinds > 0).astype(np.int64)
    accuracy = {}
    for name, model in (("bag", BagOfWords(len(task.vocab), 2, embed_dim=32, seed=0)),
                        ("lstm", SequenceClassifier(len(task.vocab), 2, hidden_size=64,
                                                    cell="lstm", embed_dim=32, seed=0))):
        opt = optim.Adam(model.params, model.grads, lr=5e-3)
        rng = np.random.default_rng(0)
        for _ in range(300):  # as examples/06_jumble.py
            batch, y = task.batch(rng, 64)
            bx, blen = data.pad_sequences(batch, task.PAD)
            model.zero_grad()
            model.loss_and_backward(bx, y, blen)
            optim.clip_grad_norm(model.grads, 5.0)
            opt.step()
        accuracy[name] = model.accuracy(x, labels, lengths)
    assert accuracy["bag"] == 0.5, accuracy
    assert accuracy["lstm"] > 0.85, accuracy  # examples/06_jumble.py, the same run: 93.9%


def test_attention_reverses_long_sequences_plain_seq2seq_does_not() -> None:
    """Reversing 20-25 letters: with attention most held-out sequences come out exactly right,
    without it (one encoded vector) few do, after the same 300 steps."""
    task = data.Reversal(20, 25, letters=20)
    test_src, test_tgt = task.sample(np.random.default_rng(1), 200, "test")
    exact = {}
    for attention in (None, "luong"):
        model, _ = data.train_reversal(task, attention, hidden_size=64, steps=300)
        pred = model.greedy(test_src, max_len=30)
        exact[attention] = np.mean([p == list(t) for p, t in zip(pred, test_tgt)])
    assert exact["luong"] >= 0.6, exact  # examples/07_attention.py, the same run: 70.0%
    assert exact[None] <= 0.2, exact
