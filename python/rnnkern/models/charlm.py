"""`CharLM`: a character-level language model, Embedding -> RNN/LSTM/GRU -> Linear."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import numpy.typing as npt

from .. import nn
from .._functional import softmax, softmax_cross_entropy
from ..data import bptt_batches
from .base import Model, State, make_rnn, register_model

__all__ = ["CharLM"]

Array = npt.NDArray[Any]
IntArray = npt.NDArray[np.int64]


@register_model
class CharLM(Model):
    """Predicts the next token of a stream: logits = head(rnn(embed(ids))).

    Layers: ``embed`` Embedding(vocab_size, embed_dim), ``rnn`` the recurrent layer of ``cell``
    ("lstm", "gru" or "rnn") with ``num_layers`` layers of ``hidden_size`` and ``dropout``
    between them (``precision`` of its products: "float", "bf16" or, for inference, "int8";
    ``layer_norm=True``, LSTM only: `nn.LSTM(..., layer_norm=True)`, docs/lstm_variants.md),
    ``head`` Linear(hidden_size, vocab_size). Trained by truncated BPTT: each
    chunk starts from the previous chunk's final state, and no gradient crosses the boundary.
    """

    def __init__(self, vocab_size: int, hidden_size: int = 256, num_layers: int = 1,
                 cell: str = "lstm", embed_dim: int = 64, dropout: float = 0.0,
                 dtype: str = "float32", seed: Optional[int] = None,
                 precision: str = "float", layer_norm: bool = False) -> None:
        super().__init__()
        self.config = {"vocab_size": vocab_size, "hidden_size": hidden_size,
                       "num_layers": num_layers, "cell": cell, "embed_dim": embed_dim,
                       "dropout": dropout, "dtype": str(np.dtype(dtype)), "seed": seed,
                       "precision": precision}
        if layer_norm:  # only then, so older checkpoints' configs stay equal
            self.config["layer_norm"] = bool(layer_norm)
        rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.embed: nn.Embedding = self._add(
            "embed", nn.Embedding(vocab_size, embed_dim, dtype=dtype, seed=rng))
        self.rnn = self._add(
            "rnn", make_rnn(cell, embed_dim, hidden_size, num_layers, dropout, dtype, rng,
                            precision, layer_norm))
        self.head: nn.Linear = self._add(
            "head", nn.Linear(hidden_size, vocab_size, dtype=dtype, seed=rng))

    def with_precision(self, precision: str) -> CharLM:
        """A copy of this model (same parameters, copied) whose recurrent layer runs
        ``precision`` ("float", "bf16", or "int8": inference only, e.g. `evaluate`, `sample`)."""
        model = CharLM(**{**self.config, "precision": precision})
        model.load_state_dict(self.state_dict())
        return model

    def forward(self, ids: IntArray, state: Optional[State] = None, training: bool = False
                ) -> Tuple[Array, State]:
        """ids (T, B) int -> logits (T, B, V) and the final state (as the layer's state)."""
        y, state = self.rnn(self.embed(ids, training), state, training=training)  # (T, B, H)
        return self.head(y, training), state

    def loss_and_backward(self, inputs: IntArray, targets: IntArray,
                          state: Optional[State] = None) -> Tuple[float, State]:
        """Mean cross-entropy of targets (T, B) given inputs (T, B) from ``state``.

        Adds the gradients into `grads` (truncated BPTT: none flows into ``state``) and returns
        (loss, final state) for the next chunk.
        """
        logits, state = self.forward(inputs, state, training=True)  # (T, B, V)
        steps, batch, vocab = logits.shape
        ce = softmax_cross_entropy(logits.reshape(steps * batch, vocab), targets.reshape(-1))
        dy = self.head.backward(ce.dlogits.reshape(steps, batch, vocab))  # (T, B, H)
        dx, _ = self.rnn.backward(dy)  # (T, B, E)
        self.embed.backward(dx)
        return float(ce.loss), state

    def evaluate(self, columns: IntArray, seq_len: int = 256) -> float:
        """Mean cross-entropy (nats per token) over a `batchify`'d stream, state carried."""
        state: Optional[State] = None
        total, count = 0.0, 0
        for x, y in bptt_batches(columns, seq_len):
            logits, state = self.forward(x, state)  # (T, B, V)
            ce = softmax_cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            total += float(ce.loss) * y.size
            count += y.size
        return total / count

    def sample(self, length: int, prime: IntArray, temperature: float = 1.0,
               rng: Optional[np.random.Generator] = None) -> IntArray:
        """Generate ``length`` tokens (length,) following the ``prime`` ids (P,), P >= 1.

        Each token is drawn from softmax(logits / temperature); temperature 0 takes the argmax.
        """
        if temperature < 0:
            raise ValueError(f"temperature: expected >= 0, got {temperature}")
        if len(prime) < 1:
            raise ValueError("prime: expected at least one token")
        rng = np.random.default_rng() if rng is None else rng
        out = np.empty(length, dtype=np.int64)  # (length,)
        logits, state = self.forward(np.asarray(prime, np.int64)[:, None])  # (P, 1, V)
        last = logits[-1, 0]  # (V,)
        for i in range(length):
            if temperature == 0:
                tok = int(np.argmax(last))
            else:
                p = softmax((last / temperature).astype(np.float64))  # (V,)
                tok = int(rng.choice(len(p), p=p / p.sum()))
            out[i] = tok
            logits, state = self.forward(np.array([[tok]], np.int64), state)  # (1, 1, V)
            last = logits[0, 0]
        return out
