"""Inside an LSTM: the input, forget and output gates and the cell state, step by step.

An LSTM is trained (a few seconds) on the long-range task: "brown" or "golden" at t = 1, then
filler words, and the answer ("german shepherd" or "retriever") at the end. The gates are
then recomputed from the layer's weights for one sequence,
    i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),
    c_t = f * c_{t-1} + i * g,   h_t = o * tanh(c_t),
checked against rnnkern's own h_t, and printed for the cell unit that carries the answer.

    python examples/04_lstm_gates.py
"""
import numpy as np

from rnnkern import data, optim
from rnnkern.models import SequenceClassifier

T, H = 20, 16
words = data.LONGRANGE_CUES + data.LONGRANGE_FILLER
model = SequenceClassifier(len(words), 2, hidden_size=H, cell="lstm", forget_bias=2.0, seed=0)
opt = optim.Adam(model.params, model.grads, lr=1e-2)
rng = np.random.default_rng(0)
for _ in range(300):
    x, y = data.longrange_batch(rng, 32, T)
    model.zero_grad()
    model.loss_and_backward(x, y)
    optim.clip_grad_norm(model.grads, 1.0)
    opt.step()
x, y = data.longrange_batch(np.random.default_rng(1), 500, T)
print(f"trained: accuracy {model.accuracy(x, y):.1%} on 500 new sequences of T = {T}\n")


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def gates(ids: np.ndarray) -> dict:
    """The gates and states of every step for sequences ids (T, B), from the layer's weights."""
    p = model.rnn.params
    emb = model.embed(ids, training=False)  # (T, B, E)
    ys, _ = model.rnn(emb, training=False)  # (T, B, H): rnnkern's h_t
    h = np.zeros((ids.shape[1], H))  # (B, H)
    c = np.zeros((ids.shape[1], H))  # (B, H)
    out = {k: [] for k in "ifgoc"}
    for t in range(ids.shape[0]):
        z = (emb[t] @ p["weight_ih_l0"].T + p["bias_ih_l0"]
             + h @ p["weight_hh_l0"].T + p["bias_hh_l0"])  # (B, 4H): gate blocks i, f, g, o
        i, f, o = sigmoid(z[:, :H]), sigmoid(z[:, H:2 * H]), sigmoid(z[:, 3 * H:])  # (B, H)
        g = np.tanh(z[:, 2 * H:3 * H])  # (B, H)
        c = f * c + i * g
        h = o * np.tanh(c)
        assert np.allclose(h, ys[t], atol=1e-5), "the gate equations reproduce rnnkern's h_t"
        for k, v in zip("ifgoc", (i, f, g, o, c)):
            out[k].append(v)
    return {k: np.stack(v) for k, v in out.items()}  # each (T, B, H)


# The unit whose final cell value separates "brown" from "golden" best.
g_all = gates(x)
c_last = g_all["c"][-1]  # (B, H)
unit = int(np.argmax(np.abs(c_last[y == 0].mean(0) - c_last[y == 1].mean(0))))
for label in (0, 1):
    b = int(np.flatnonzero(y == label)[0])
    print(f"sequence starting with {words[x[0, b]]!r} -> class {label}; cell unit {unit}:")
    print("   t  word       input i  forget f  output o   cell c")
    for t in range(T):
        print(f"  {t + 1:2d}  {words[x[t, b]]:<9}  {g_all['i'][t, b, unit]:7.3f}  "
              f"{g_all['f'][t, b, unit]:8.3f}  {g_all['o'][t, b, unit]:8.3f}  "
              f"{g_all['c'][t, b, unit]:7.3f}")
    print()
c_unit = g_all["c"][:, :, unit]  # (T, B)
same_sign = np.mean(np.sign(c_unit[0]) == np.sign(c_unit[-1]))
print(f"over all 500 sequences, unit {unit}: mean forget gate {g_all['f'][:, :, unit].mean():.3f};"
      f" the sign of the cell at t = 1 (set by the cue) is still its sign at t = {T} in "
      f"{same_sign:.1%} of them: the cell carries the cue across the filler words, and the "
      "classifier reads it at the end.")
