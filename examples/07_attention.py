"""Attention: the decoder looks back at every encoder output instead of one encoded vector.

The lecture's encoder-decoder squeezes the whole input into its final state. Reversing a
sequence of 20 to 25 letters needs every letter at a different output step; without attention
they must all fit in that one vector. With Luong attention (`Seq2Seq(attention="luong")`) the
decoder scores every encoder output at every step and reads their weighted mean. Both are
trained the same way here by `data.train_reversal` for a few hundred steps (`rnnkern attention`
does 30 to 40 letters for a time budget and draws the weights as a heatmap).

    python examples/07_attention.py
"""
import numpy as np

from rnnkern import data

task = data.Reversal(min_len=20, max_len=25, letters=20)
test_src, test_tgt = task.sample(np.random.default_rng(1), 200, "test")
for attention in (None, "luong"):
    model, _ = data.train_reversal(task, attention, hidden_size=64, steps=300)
    pred = model.greedy(test_src, max_len=30)
    exact = np.mean([p == list(t) for p, t in zip(pred, test_tgt)])
    print(f"attention={attention}: held-out exact match {exact:.1%}")
    print(f"  {task.src_vocab.decode(test_src[0])}  ->  {task.tgt_vocab.decode(pred[0])}")

weights = model.attention_weights(test_src[:1], [pred[0]])[0]  # (len(out) + 1, len(in))
print("output step t looks hardest at input position:", weights.argmax(axis=1).tolist())
