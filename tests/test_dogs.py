"""The lecture's worked example: an RNN learns to spell "dogs".

Vocabulary {d, o, g, s} one-hot, hidden size 3, tanh, no biases, exactly the lecture's shapes:
    a_t = W_H h_{t-1} + W_X x_t,   h_t = tanh(a_t),   y_t = softmax(W_Y h_t)
with W_X (3, 4) = w_ih, W_H (3, 3) = w_hh and W_Y (4, 3) the output layer. Given "d", "o", "g" it
must predict "o", "g", "s", trained with rnnkern's kernels, softmax_cross_entropy and Adam.
"""
from __future__ import annotations

import numpy as np
import pytest

import rnnkern

VOCAB = "dogs"
HIDDEN = 3
STEPS = 150


def one_hot(text: str) -> np.ndarray:
    """(T, 1, 4) one-hot rows of ``text``'s letters: time-major, batch of one."""
    x = np.zeros((len(text), 1, len(VOCAB)), np.float32)  # (T, 1, 4)
    x[np.arange(len(text)), 0, [VOCAB.index(ch) for ch in text]] = 1
    return x


def loss_and_grads(params: dict[str, np.ndarray], x: np.ndarray,
                   targets: np.ndarray) -> tuple[float, dict[str, np.ndarray], np.ndarray]:
    """Forward and backward through the RNN and the output layer: (loss, grads, logits)."""
    y, _, cache = rnnkern.rnn_forward(x, None, params["W_X"], params["W_H"], None, None)
    h = y[:, 0, :]  # (T, 3) hidden states h_1..h_T
    logits = h @ params["W_Y"].T  # (T, 4) z_t = W_Y h_t
    loss, dlogits = rnnkern.softmax_cross_entropy(logits, targets)  # dlogits (T, 4)
    dy = (dlogits @ params["W_Y"])[:, None, :]  # (T, 1, 3) dL/dh_t from the output layer
    g = rnnkern.rnn_backward(cache, dy)
    assert g.db_ih is None and g.db_hh is None
    # dL/dW_Y = sum over t of dL_t/dz_t h_t^T: the lecture's sum over time steps
    grads = {"W_X": g.dw_ih, "W_H": g.dw_hh, "W_Y": dlogits.T @ h}
    return loss, grads, logits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rnn_learns_to_spell_dogs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bound = 1 / np.sqrt(HIDDEN)
    params = {
        "W_X": rng.uniform(-bound, bound, (HIDDEN, len(VOCAB))).astype(np.float32),  # (3, 4)
        "W_H": rng.uniform(-bound, bound, (HIDDEN, HIDDEN)).astype(np.float32),  # (3, 3)
        "W_Y": rng.uniform(-bound, bound, (len(VOCAB), HIDDEN)).astype(np.float32),  # (4, 3)
    }
    x = one_hot("dog")  # (3, 1, 4)
    targets = np.array([VOCAB.index(ch) for ch in "ogs"])  # (3,)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    optimizer = rnnkern.optim.Adam(params, grads, lr=0.05)

    first, _, _ = loss_and_grads(params, x, targets)
    for _ in range(STEPS):
        _, step_grads, _ = loss_and_grads(params, x, targets)
        for k, g in step_grads.items():
            grads[k][...] = g
        optimizer.step()
    last, _, logits = loss_and_grads(params, x, targets)

    predicted = "".join(VOCAB[i] for i in logits.argmax(axis=1))
    assert predicted == "ogs", predicted  # after "d", "o", "g" comes "s"
    assert np.isclose(first, np.log(4), atol=0.3)  # a fresh model guesses about uniformly
    assert last < first / 20, (first, last)
