"""A trained character model run in int8 (issue 14, item 5: within 2% of its float32 loss).

`CharLM.with_precision` runs the trained parameters' recurrent layer in another precision;
`rnnkern train-char --eval-precision int8` reports that loss, `rnnkern sample --precision int8`
samples with it. The full-size measurement is in docs/training.md.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rnnkern import data, optim
from rnnkern.cli import main
from rnnkern.models import CharLM

#: issue 14's bound on a trained model's int8 validation loss, relative to its float32 loss
INT8_LOSS_BOUND = 0.02


def test_int8_loss_of_a_trained_model_within_2_percent() -> None:
    text = data.default_corpus(40_000)
    vocab = data.Vocab.from_text(text)
    train_ids, val_ids = data.split_ids(vocab.encode(text), 0.1)
    columns = data.batchify(train_ids, 16)  # (N, 16)
    val_columns = data.batchify(val_ids, 8)  # (M, 8)
    model = CharLM(len(vocab), hidden_size=64, embed_dim=16, seed=0)
    opt = optim.Adam(model.params, model.grads, lr=1e-2)
    state = None
    for step, (x, y) in enumerate(data.bptt_batches(columns, 40)):
        if step == 50:
            break
        model.zero_grad()
        _, state = model.loss_and_backward(x, y, state)
        opt.step()
    fp32 = model.evaluate(val_columns, 100)
    assert fp32 < np.log(len(vocab)) - 1.0  # it learned something: well below uniform
    int8_model = model.with_precision("int8")
    assert int8_model.rnn.precision == "int8" and model.rnn.precision == "float"
    int8 = int8_model.evaluate(val_columns, 100)
    assert int8 != fp32  # quantized
    assert abs(int8 - fp32) <= INT8_LOSS_BOUND * fp32, (int8, fp32)
    assert model.evaluate(val_columns, 100) == fp32  # the original is unchanged


def test_cli_eval_precision_and_sample_in_int8(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    text_file = tmp_path / "fox.txt"
    text_file.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    ckpt = tmp_path / "fox.npz"
    assert main(["train-char", str(text_file), "--hidden", "16", "--embed", "8", "--seq-len",
                 "10", "--batch", "4", "--steps", "6", "--sample-every", "0", "--out",
                 str(ckpt), "--no-progress", "--val-chars", "300", "--seed", "1",
                 "--eval-precision", "int8,bf16"]) == 0
    out = capsys.readouterr().out
    assert "validation loss run in int8: " in out and "validation loss run in bf16: " in out
    samples = []
    for _ in range(2):
        assert main(["sample", str(ckpt), "--length", "20", "--seed", "0",
                     "--precision", "int8"]) == 0
        samples.append(capsys.readouterr().out)
    assert samples[0] == samples[1] and len(samples[0]) == 1 + 20 + 1
    with pytest.raises(SystemExit):
        main(["train-char", "--eval-precision", "fp8"])
    assert "expected float, bf16 or int8, got fp8" in capsys.readouterr().err
