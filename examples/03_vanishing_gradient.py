"""The vanishing gradient: ||dL_T/dh_t|| for t = T back to 0, vanilla RNN against LSTM.

dL_T/dh_t = dL_T/dh_T * dh_T/dh_{T-1} * ... * dh_{t+1}/dh_t: a product of T - t Jacobians. For
a tanh RNN each factor is W_hh^T diag(1 - h^2), of norm below 1 at PyTorch's initialization, so
the product shrinks geometrically. An LSTM's cell state passes the gradient on multiplied only by
the forget gate: with the gates open (a forget bias of 5, f ~ 0.993) it barely shrinks at all.

    python examples/03_vanishing_gradient.py            # table
    python examples/03_vanishing_gradient.py plot.png   # and a plot (matplotlib)
"""
import sys

import numpy as np

from rnnkern import data, diagnostics
from rnnkern.models import SequenceClassifier

T = 80
x, y = data.longrange_batch(np.random.default_rng(0), 16, T)  # the long-range task's inputs
curves = {}
for label, cell, bias in (("RNN (tanh)", "rnn", 0.0), ("LSTM, forget bias 0", "lstm", 0.0),
                          ("LSTM, forget bias 5", "lstm", 5.0)):
    model = SequenceClassifier(12, 2, hidden_size=32, cell=cell, forget_bias=bias,
                               dtype="float64", seed=0)  # float32 would underflow to 0
    _, dh_last = model.loss_and_backward(x, y)  # dL_T/dh_T of the classifier's loss
    norms = diagnostics.gradient_flow(model.rnn, model.embed(x, training=False), dy_last=dh_last)
    curves[label] = norms / norms[-1]

steps = list(range(T, -1, -10))
print("||dL_T/dh_t|| / ||dL_T/dh_T|| at t =", steps)
for label, norms in curves.items():
    print(f"  {label:<20}", " ".join(f"{norms[t]:8.1e}" for t in steps))
if len(sys.argv) > 1:
    diagnostics.plot_gradient_flow(curves, sys.argv[1], title=f"Gradient flow, T = {T}")
    print("plot saved to", sys.argv[1])
