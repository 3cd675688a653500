"""The lecture's DOGS example: read d, o, g as one-hot vectors and predict o, g, s (H = 3).

First one forward step written out as on the slide,
    a_1 = W_H h_0 + W_X x_1 (+ b),  h_1 = tanh(a_1),  y_1 = softmax(W_Y h_1),
checked against rnnkern's kernel; then the whole network trained with `rnnkern dogs`.

    python examples/01_dogs.py
"""
import numpy as np

import rnnkern
from rnnkern.cli import main

letters = "dogs"
onehot = np.eye(4)  # (4, 4): row k is the one-hot vector of letters[k]
x = onehot[[0, 1, 2]][:, None, :]  # (T=3, B=1, I=4): d, o, g
rng = np.random.default_rng(0)
H = 3
W_X = rng.uniform(-0.5, 0.5, (H, 4))  # (H, I)   rnnkern's w_ih
W_H = rng.uniform(-0.5, 0.5, (H, H))  # (H, H)   rnnkern's w_hh
W_Y = rng.uniform(-0.5, 0.5, (4, H))  # (4, H)   the output layer
h0 = np.zeros((1, H))  # (B, H)

# The slide's first step, by hand (no biases here: pass None for both).
a1 = W_H @ h0[0] + W_X @ x[0, 0]  # (H,)
h1 = np.tanh(a1)  # (H,)
y1 = rnnkern.softmax(W_Y @ h1)  # (4,)
print("a_1 =", np.round(a1, 4), "\nh_1 =", np.round(h1, 4), "\ny_1 =", np.round(y1, 4))

# The same with rnnkern's kernel, all three steps at once.
out = rnnkern.rnn_forward(x, h0, W_X, W_H, None, None)
print("rnnkern h_1 =", np.round(out.y[0, 0], 4), " equal:", np.allclose(out.y[0, 0], h1))
probs = rnnkern.softmax(out.y[:, 0] @ W_Y.T)  # (T, 4)
print("untrained predictions after d, o, g:",
      ", ".join(letters[int(k)] for k in probs.argmax(axis=1)), "(want o, g, s)\n")

# Training: `rnnkern dogs` (BPTT through rnnkern's kernel, Adam) until o, g, s come out.
raise SystemExit(main(["dogs"]))
