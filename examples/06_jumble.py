"""The lecture's opening: "POLICY IS THE BEST HONESTY" -- does word order carry meaning?

Sentences of a small built-in English grammar (`rnnkern.sentences`: people, things, the
lecture's proverbs) are shown as written or with their words jumbled (shuffled, or two words
swapped, never into another sentence); a model must say which. A bag of words (the mean of the
word vectors) sees the same words either way, so it stays at chance; an LSTM reads them in
order. 300 steps here (`rnnkern jumble` trains for a time budget, and a vanilla RNN too).

    python examples/06_jumble.py
"""
import numpy as np

import rnnkern
from rnnkern import data, optim
from rnnkern.models import BagOfWords, SequenceClassifier

task = data.JumbledSentences(test_size=500)  # held out: never drawn for training
test_ids, test_kinds, _ = task.pairs(np.random.default_rng(1), task.test)  # written, jumbled
test_x, test_lengths = data.pad_sequences(test_ids, task.PAD)  # (T, N), (N,)
test_labels = (test_kinds > 0).astype(np.int64)  # (N,) 1 = jumbled
print(f"{len(task.test)} held-out sentences, e.g. {' '.join(task.test[7])!r}")

models = {"bag of words": BagOfWords(len(task.vocab), 2, embed_dim=32, seed=0),
          "LSTM": SequenceClassifier(len(task.vocab), 2, hidden_size=64, cell="lstm",
                                     embed_dim=32, seed=0)}
for name, model in models.items():
    opt = optim.Adam(model.params, model.grads, lr=5e-3)
    rng = np.random.default_rng(0)
    for _ in range(300):
        ids, labels = task.batch(rng, 64)  # 32 fresh sentences, as written and jumbled
        x, lengths = data.pad_sequences(ids, task.PAD)  # (T, B), (B,)
        model.zero_grad()
        model.loss_and_backward(x, labels, lengths)
        optim.clip_grad_norm(model.grads, 5.0)
        opt.step()
    print(f"{name}: held-out accuracy "
          f"{model.accuracy(test_x, test_labels, test_lengths):.1%} (chance 50%)")

shown = [data.tokenize_sentence(t) for t in ("POLICY IS THE BEST HONESTY",
                                              "HONESTY IS THE BEST POLICY")]
x, lengths = data.pad_sequences([task.encode(w) for w in shown], task.PAD)
for name, model in models.items():
    logits, _ = model.forward(x, lengths=lengths)
    for p, words in zip(rnnkern.softmax(logits.astype(np.float64))[:, 1], shown):
        print(f"  {name:<12} p(jumbled) = {p:.2f}  {' '.join(words)}")
