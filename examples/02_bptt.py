"""Backpropagation through time: rnnkern's gradients against finite differences.

The lecture's loss L = sum_t L_t, L_t = cross-entropy(softmax(W_Y h_t), target_t); its gradient
for W_Y is the sum over t of dL_t/dW_Y, and W_X, W_H get theirs through the chain
dh_T/dh_{T-1} ... dh_2/dh_1. rnnkern.rnn_backward computes all of them in one backward pass;
here every entry is checked against (L(w + eps) - L(w - eps)) / (2 eps) in float64.

    python examples/02_bptt.py
"""
import numpy as np

import rnnkern

rng = np.random.default_rng(0)
T, B, N_IN, H, V = 6, 2, 4, 5, 4  # steps, batch, inputs, hidden, output classes
x = rng.standard_normal((T, B, N_IN))  # (T, B, I)
targets = rng.integers(0, V, size=(T, B))  # (T, B)
params = {
    "w_ih": rng.uniform(-0.5, 0.5, (H, N_IN)), "w_hh": rng.uniform(-0.5, 0.5, (H, H)),
    "b_ih": rng.uniform(-0.5, 0.5, H), "b_hh": rng.uniform(-0.5, 0.5, H),
    "w_y": rng.uniform(-0.5, 0.5, (V, H)),
}


def loss_and_grads(p: dict, with_grads: bool = True):
    out = rnnkern.rnn_forward(x, None, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])
    logits = out.y @ p["w_y"].T  # (T, B, V)
    ce = rnnkern.softmax_cross_entropy(logits.reshape(T * B, V), targets.reshape(-1))
    loss = float(ce.loss) * T * B  # the lecture's sum over steps (and sequences)
    if not with_grads:
        return loss, None
    dlogits = ce.dlogits.reshape(T, B, V) * (T * B)  # (T, B, V)
    grads = {"w_y": np.einsum("tbv,tbh->vh", dlogits, out.y)}  # sum over t of dL_t/dW_Y
    g = rnnkern.rnn_backward(out.cache, dlogits @ p["w_y"])  # BPTT from dL/dh_t, (T, B, H)
    grads.update(w_ih=g.dw_ih, w_hh=g.dw_hh, b_ih=g.db_ih, b_hh=g.db_hh)
    return loss, grads


loss, grads = loss_and_grads(params)
print(f"L = {loss:.6f}")
print(f"{'parameter':>9}  {'entries':>7}  {'max |BPTT - finite difference|':>31}")
eps = 1e-6
for name, p in params.items():
    numeric = np.zeros_like(p)
    for i in np.ndindex(p.shape):
        old = p[i]
        p[i] = old + eps
        up, _ = loss_and_grads(params, False)
        p[i] = old - eps
        down, _ = loss_and_grads(params, False)
        p[i] = old
        numeric[i] = (up - down) / (2 * eps)
    err = np.max(np.abs(grads[name] - numeric))
    print(f"{name:>9}  {p.size:7d}  {err:31.2e}")
    assert err < 1e-6 * max(1.0, np.abs(numeric).max()), name
print("BPTT agrees with finite differences.")
