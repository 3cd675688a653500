"""The lecture's opening: "POLICY IS THE BEST HONESTY" -- does word order carry meaning?

Sentences from Python's own documentation (nothing downloaded) are shown as written or with
their words jumbled (shuffled, or two words swapped); a model must say which. A bag of words
(the mean of the word vectors) sees the same words either way, so it stays at chance; an LSTM
reads them in order. A few hundred steps here (`rnnkern jumble` trains longer, and a vanilla
RNN too).

    python examples/06_jumble.py
"""
import numpy as np

import rnnkern
from rnnkern import data, optim
from rnnkern.models import BagOfWords, SequenceClassifier

task = data.JumbledSentences()
test_ids, test_kinds, test_words = task.examples(np.random.default_rng(1), task.test)  # 0: written
test_labels = (test_kinds > 0).astype(np.int64)
test_x, test_lengths = data.pad_sequences(test_ids, task.PAD)  # (T, N), (N,)
print(f"{len(task.train)} training sentences, {len(task.test)} held out, e.g. "
      f"{' '.join(task.train[0])!r}")

models = {"bag of words": BagOfWords(len(task.vocab), 2, embed_dim=64, seed=0),
          "LSTM": SequenceClassifier(len(task.vocab), 2, hidden_size=64, cell="lstm",
                                     embed_dim=64, seed=0)}
with rnnkern.numpy_blas_threads(1):
    for name, model in models.items():
        opt = optim.Adam(model.params, model.grads, lr=5e-3)
        rng = np.random.default_rng(0)
        for _ in range(400):
            ids, labels = task.batch(rng, 64)  # fresh jumbles every step
            x, lengths = data.pad_sequences(ids, task.PAD)  # (T, B), (B,)
            model.zero_grad()
            model.loss_and_backward(x, labels, lengths)
            optim.clip_grad_norm(model.grads, 5.0)
            opt.step()
        print(f"{name}: held-out accuracy "
              f"{model.accuracy(test_x, test_labels, test_lengths):.1%} (chance 50%)")

shown = [data.tokenize_sentence(t) for t in ("POLICY IS THE BEST HONESTY",
                                              "HONESTY IS THE BEST POLICY")] + test_words[:4]
truth = ["jumbled", "written"] + ["jumbled" if k else "written" for k in test_kinds[:4]]
x, lengths = data.pad_sequences([task.encode(w) for w in shown], task.PAD)
logits, _ = models["LSTM"].forward(x, lengths=lengths)
for p, t, w in zip(rnnkern.softmax(logits.astype(np.float64))[:, 1], truth, shown):
    print(f"  LSTM p(jumbled) = {p:.2f}  ({t})  {' '.join(w)}")
