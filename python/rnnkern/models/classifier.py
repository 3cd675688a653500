"""One label per sequence: `SequenceClassifier` reads the recurrent layer's last output,
`BagOfWords` the mean of the word vectors (blind to word order by construction)."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import numpy.typing as npt

from .. import nn
from .._functional import softmax_cross_entropy
from .base import Model, make_rnn, register_model

__all__ = ["SequenceClassifier", "BagOfWords"]

Array = npt.NDArray[Any]
IntArray = npt.NDArray[np.int64]


class _Classifier(Model):
    """What both classifiers share: `forward(ids, training, lengths)` -> (logits (B, C), ...)."""

    def forward(self, ids: IntArray, training: bool = False, lengths: Optional[IntArray] = None
                ) -> Tuple[Array, Array]:
        raise NotImplementedError

    def accuracy(self, ids: IntArray, labels: IntArray,
                 lengths: Optional[IntArray] = None) -> float:
        """The fraction of sequences whose most likely class is the label."""
        logits, _ = self.forward(ids, lengths=lengths)
        return float(np.mean(logits.argmax(axis=1) == labels))


@register_model
class SequenceClassifier(_Classifier):
    """logits = head(h_T): ``embed`` -> ``rnn`` (cell "lstm", "gru" or "rnn") -> ``head``.

    h_T is the top layer's output at the last step, so the loss reaches the first tokens only
    through T steps of the recurrence: the lecture's long-range dependency.

    ``forget_bias`` and ``input_bias`` (LSTM only) are added to the forget and input gates'
    biases at initialization. A large forget bias opens the forget gates, so the cell state
    starts out as a highway that carries information (and gradient) across many steps (Gers et
    al. 2000; Jozefowicz et al. 2015 recommend 1); a negative input bias lets little of each
    input into the cell, so noise accumulates slowly (the idea of Tallec & Ollivier's 2018
    "chrono" initialization, b_i = -b_f).
    """

    def __init__(self, vocab_size: int, num_classes: int, hidden_size: int = 32,
                 num_layers: int = 1, cell: str = "lstm", embed_dim: int = 16,
                 forget_bias: float = 0.0, input_bias: float = 0.0, dtype: str = "float32",
                 seed: Optional[int] = None) -> None:
        super().__init__()
        self.config = {"vocab_size": vocab_size, "num_classes": num_classes,
                       "hidden_size": hidden_size, "num_layers": num_layers, "cell": cell,
                       "embed_dim": embed_dim, "forget_bias": forget_bias,
                       "input_bias": input_bias,
                       "dtype": str(np.dtype(dtype)), "seed": seed}
        for name, value in (("forget_bias", forget_bias), ("input_bias", input_bias)):
            if value != 0.0 and cell != "lstm":
                raise ValueError(f"{name}: only an LSTM has these gates, got cell {cell!r}")
        rng = np.random.default_rng(seed)
        self.embed: nn.Embedding = self._add(
            "embed", nn.Embedding(vocab_size, embed_dim, dtype=dtype, seed=rng))
        self.rnn = self._add(
            "rnn", make_rnn(cell, embed_dim, hidden_size, num_layers, 0.0, dtype, rng))
        self.head: nn.Linear = self._add(
            "head", nn.Linear(hidden_size, num_classes, dtype=dtype, seed=rng))
        for layer in range(num_layers):  # LSTM gate blocks i, f, g, o of H rows each
            bias = self.rnn.params.get(f"bias_hh_l{layer}")
            if bias is not None and cell == "lstm":
                bias.flags.writeable = True  # the layer's parameters are read-only (packed)
                bias[:hidden_size] += input_bias
                bias[hidden_size:2 * hidden_size] += forget_bias

    def forward(self, ids: IntArray, training: bool = False, lengths: Optional[IntArray] = None
                ) -> Tuple[Array, Array]:
        """ids (T, B) -> (logits (B, C), the layer's outputs y (T, B, H)).

        lengths (B,): sequence b is ids[:lengths[b], b] (padded after), read at its own last step.
        """
        y, _ = self.rnn(self.embed(ids, training), lengths=lengths,
                        training=training)  # (T, B, H)
        return self.head(y[_last_steps(y, lengths)], training), y

    def loss_and_backward(self, ids: IntArray, labels: IntArray,
                          lengths: Optional[IntArray] = None) -> Tuple[float, Array]:
        """Mean cross-entropy of labels (B,); adds gradients into `grads`.

        Returns (loss, dL/dh_T (B, H)), the gradient that reaches the last hidden state.
        """
        logits, y = self.forward(ids, training=True, lengths=lengths)
        ce = softmax_cross_entropy(logits, labels)
        dh_last = self.head.backward(ce.dlogits)  # (B, H)
        dy = np.zeros_like(y)  # (T, B, H): only the last step has a loss
        dy[_last_steps(y, lengths)] = dh_last
        dx, _ = self.rnn.backward(dy)  # (T, B, E)
        self.embed.backward(dx)
        return float(ce.loss), dh_last


def _own_steps(ids: IntArray, lengths: Optional[IntArray]) -> Tuple[Array, IntArray]:
    """For ids (T, B): whether each step is a sequence's own (T, B) bool, and the lengths (B,)."""
    steps, batch = ids.shape
    n = np.full(batch, steps) if lengths is None else np.asarray(lengths)  # (B,)
    return np.arange(steps)[:, None] < n[None, :], n


def _sorted_words(ids: IntArray, lengths: Optional[IntArray]) -> IntArray:
    """ids (T, B) with each sequence's own ids in ascending order, its padding after as before:
    the same array for every order of the same words."""
    keep, _ = _own_steps(ids, lengths)  # (T, B)
    ordered = np.sort(np.where(keep, ids, np.iinfo(np.int64).max), axis=0)  # (T, B), pads last
    return np.where(keep, ordered, ids)


def _last_steps(y: Array, lengths: Optional[IntArray]) -> Any:
    """The index of each sequence's last step in y (T, B, H): y[index] is (B, H)."""
    if lengths is None:
        return -1
    return (np.asarray(lengths) - 1, np.arange(y.shape[1]))


@register_model
class BagOfWords(_Classifier):
    """logits = head(mean of the word vectors): ``embed`` -> mean over the sequence -> ``head``.

    The mean is the same for every order of the same words, so this model cannot tell a
    sentence from its words jumbled: the order-blind baseline of the lecture's opening. It is
    the same to the bit: each sequence's words are summed in ascending id order.
    """

    def __init__(self, vocab_size: int, num_classes: int, embed_dim: int = 32,
                 dtype: str = "float32", seed: Optional[int] = None) -> None:
        super().__init__()
        self.config = {"vocab_size": vocab_size, "num_classes": num_classes,
                       "embed_dim": embed_dim, "dtype": str(np.dtype(dtype)), "seed": seed}
        rng = np.random.default_rng(seed)
        self.embed: nn.Embedding = self._add(
            "embed", nn.Embedding(vocab_size, embed_dim, dtype=dtype, seed=rng))
        self.head: nn.Linear = self._add(
            "head", nn.Linear(embed_dim, num_classes, dtype=dtype, seed=rng))

    def _mask(self, ids: IntArray, lengths: Optional[IntArray]) -> Array:
        """(T, B, 1): 1/length at each sequence's own steps, 0 on padding."""
        keep, n = _own_steps(ids, lengths)  # (T, B), (B,)
        return (keep / n[None, :])[:, :, None].astype(self.embed.dtype)

    def forward(self, ids: IntArray, training: bool = False, lengths: Optional[IntArray] = None
                ) -> Tuple[Array, Array]:
        """ids (T, B) (lengths (B,): padded after) -> (logits (B, C), the mean vectors (B, E))."""
        words = _sorted_words(ids, lengths)  # (T, B)
        mean = (self.embed(words, training) * self._mask(ids, lengths)).sum(axis=0)  # (B, E)
        return self.head(mean, training), mean

    def loss_and_backward(self, ids: IntArray, labels: IntArray,
                          lengths: Optional[IntArray] = None) -> Tuple[float, Array]:
        """Mean cross-entropy of labels (B,); adds gradients into `grads`; (loss, dL/dmean)."""
        logits, _ = self.forward(ids, training=True, lengths=lengths)
        ce = softmax_cross_entropy(logits, labels)
        dmean = self.head.backward(ce.dlogits)  # (B, E)
        self.embed.backward(dmean[None] * self._mask(ids, lengths))  # (T, B, E)
        return float(ce.loss), dmean

