"""The vanishing gradient, measured: how much a loss at the last step depends on each h_t.

`gradient_flow(layer, x)` returns ||dL_T / dh_t|| for t = 0..T. It needs only the layers'
public API (`y, state = layer(x, state)`, `dx, dstate0 = layer.backward(dy, dstate)`):

1. Run the sequence one step at a time (inference), keeping the state s_t entering every step.
2. Walk back from the last step: re-run step t from s_{t-1} in training mode and call
   ``backward(dy_t, dstate=g_t)``, where g_t = dL_T/ds_t comes from the step after it and
   dy_t = dL_T/dy_t is zero except at t = T. The returned ``dstate0`` is exactly
   g_{t-1} = dL_T/ds_{t-1}: the chain rule through one step, done by the layer's own backward.

That costs 2T single-step forwards and T single-step backwards (O(T), not the O(T^2) of a
backward over every suffix), and is exact: the test suite checks it against a backward over each
suffix of the sequence. For an LSTM s_t = (h_t, c_t) and the reported norm is the h part.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__all__ = ["gradient_flow", "plot_gradient_flow", "plot_attention", "require_matplotlib"]

Array = npt.NDArray[Any]


def gradient_flow(layer: Any, x: Array, state: Any = None, dy_last: Optional[Array] = None
                  ) -> npt.NDArray[np.float64]:
    """||dL_T / dh_t|| for t = 0..T of a recurrent layer (`rnnkern.nn.RNN`, `LSTM` or `GRU`).

    layer: a unidirectional layer without dropout (any number of layers, batch_first or not).
    x: the input (T, B, I) ((B, T, I) if batch_first), the layer's dtype.
    state: the initial state (None: zeros).
    dy_last: dL_T/dy_T (B, H), the gradient of the loss at the last output; None means ones
        (L_T = the sum of the last output).
    Returns norms (T + 1,) float64: norms[t] is the Frobenius norm over the batch of the
    gradient with respect to the top layer's hidden state after t steps (h_0 is the initial
    state, h_T the last). The layer's grads are left as they were.
    """
    if getattr(layer, "bidirectional", False):
        raise ValueError("layer: gradient_flow needs a unidirectional layer")
    if getattr(layer, "dropout", 0.0) > 0.0 and getattr(layer, "num_layers", 1) > 1:
        raise ValueError("layer: gradient_flow needs dropout = 0 (the steps are re-run)")
    if not isinstance(x, np.ndarray) or x.ndim != 3:
        raise ValueError(f"x: expected a 3-dimensional ndarray, got {getattr(x, 'shape', x)!r}")
    axis = 1 if layer.batch_first else 0  # time axis of x and y
    steps, batch = x.shape[axis], x.shape[1 - axis]
    if dy_last is None:
        dy_last = np.ones((batch, layer.hidden_size), dtype=layer.dtype)  # (B, H)
    if dy_last.shape != (batch, layer.hidden_size):
        raise ValueError(f"dy_last: expected shape (B, H) = {(batch, layer.hidden_size)}, "
                         f"got {dy_last.shape}")

    def step(t: int) -> Array:
        return x[:, t:t + 1] if axis else x[t:t + 1]  # one step, (1, B, I) or (B, 1, I)

    entering = [state]  # entering[t]: the state before step t (s_t in 0-based steps)
    for t in range(steps - 1):
        _, s = layer(step(t), entering[-1], training=False)
        entering.append(s)
    saved = {k: g.copy() for k, g in layer.grads.items()}
    norms = np.empty(steps + 1)  # (T + 1,)
    norms[steps] = np.linalg.norm(dy_last)
    dstate = None
    try:
        for t in reversed(range(steps)):
            y, _ = layer(step(t), entering[t], training=True)  # (1, B, H) or (B, 1, H)
            dy = None
            if t == steps - 1:
                dy = np.expand_dims(dy_last.astype(y.dtype), axis)  # like y
            _, dstate = layer.backward(dy, dstate)
            dh = dstate[0] if isinstance(dstate, tuple) else dstate  # (L, B, H)
            norms[t] = np.linalg.norm(dh[-1])
    finally:
        for k, g in layer.grads.items():
            g[...] = saved[k]
    return norms


def plot_gradient_flow(curves: Mapping[str, npt.ArrayLike], out: Union[str, Path],
                       title: str = "Gradient flow: ||dL_T / dh_t||") -> None:
    """Plot gradient-norm curves (label -> norms over t) on a log scale and save to ``out``.

    Needs matplotlib (the ``plot`` extra). Zeros (an underflow) are left out of the plot.
    """
    plt = require_matplotlib("plot_gradient_flow")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, norms in curves.items():
        arr = np.asarray(norms, dtype=np.float64)
        ax.semilogy(np.arange(len(arr)), np.where(arr > 0, arr, np.nan), label=label)
    ax.set_xlabel("t (step whose hidden state h_t the gradient is taken with respect to)")
    ax.set_ylabel("||dL_T / dh_t||")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def require_matplotlib(what: str) -> Any:
    """matplotlib.pyplot on the Agg backend; ImportError naming ``what`` if it is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ImportError(f"{what} needs matplotlib: pip install rnnkern[plot]") from err
    return plt


def plot_attention(weights: npt.ArrayLike, src_tokens: Sequence[str], out_tokens: Sequence[str],
                   out: Union[str, Path], title: str = "Attention weights") -> None:
    """Draw attention weights (len(out_tokens), len(src_tokens)) as a heatmap; save to ``out``.

    Row t: where the decoder looked (a distribution over the input tokens, on the x axis)
    while it wrote output token t (on the y axis). Needs matplotlib.
    """
    arr = np.asarray(weights, dtype=np.float64)  # (T, S)
    if arr.shape != (len(out_tokens), len(src_tokens)):
        raise ValueError(f"weights: expected shape (len(out_tokens), len(src_tokens)) = "
                         f"{(len(out_tokens), len(src_tokens))}, got {arr.shape}")
    plt = require_matplotlib("plot_attention")
    fig, ax = plt.subplots(figsize=(0.2 * len(src_tokens) + 2.5, 0.2 * len(out_tokens) + 1.8))
    image = ax.imshow(arr, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(src_tokens)), list(src_tokens), fontsize=7)
    ax.set_yticks(range(len(out_tokens)), list(out_tokens), fontsize=7)
    ax.set_xlabel("input token (encoder step)")
    ax.set_ylabel("output token (decoder step)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
