"""Encoder-decoder: "three hundred and twelve" -> "312", inputs and outputs of different lengths.

The encoder LSTM reads the words; its final (h, c), the "encoded vector", is the decoder's
initial state; the decoder is trained with teacher forcing and then decodes greedily and with a
beam until it emits <eos>. Numbers up to 999 here, so it trains in seconds
(`rnnkern train-seq2seq` does 0..999,999).

    python examples/05_seq2seq.py
"""
import time

import numpy as np

from rnnkern import data, optim
from rnnkern.models import Seq2Seq

task = data.NumberWords(max_value=999)
rng = np.random.default_rng(0)
model = Seq2Seq(len(task.src_vocab), len(task.tgt_vocab), hidden_size=64, embed_dim=16,
                pad=task.PAD, bos=task.BOS, eos=task.EOS, seed=0)
opt = optim.Adam(model.params, model.grads, lr=5e-3)
test_src, test_tgt, test_numbers = task.sample(np.random.default_rng(1), 200, "test")

start = time.perf_counter()
for step in range(1, 401):
    src, tgt, _ = task.sample(rng, 32, "train")  # lists of id arrays of different lengths
    model.zero_grad()
    loss = model.loss_and_backward(src, tgt)  # teacher forcing, padded with lengths
    optim.clip_grad_norm(model.grads, 5.0)
    opt.step()
    if step % 100 == 0:
        pred = model.greedy(test_src)
        acc = np.mean([p == list(t) for p, t in zip(pred, test_tgt)])
        print(f"step {step}  loss {loss:.3f}  held-out exact match {acc:.1%}  "
              f"({time.perf_counter() - start:.0f} s)")

beam = model.beam_search(test_src[:8], beam_size=4)
for s, g, b, n in zip(test_src[:8], model.greedy(test_src[:8]), beam, test_numbers[:8]):
    print(f"  {task.src_vocab.decode(s)!r:45} greedy {task.tgt_vocab.decode(g):>4}  "
          f"beam {task.tgt_vocab.decode(b):>4}  (true {n})")
