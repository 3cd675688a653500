"""`Seq2Seq`: an encoder-decoder for inputs and outputs of different lengths.

The encoder reads the source; its final state (h, or (h, c) for an LSTM) is the decoder's
initial state, the lecture's "encoded vector". The decoder is trained with teacher forcing (it
reads <bos> y_1 .. y_n and predicts y_1 .. y_n <eos>) and decodes greedily or by beam search
until <eos>. Batches of sequences are padded, and `lengths` keeps padding out of the states.

With ``attention="luong"`` the decoder also looks back at every encoder output at every step
(`rnnkern.nn.LuongAttention`), instead of relying on the one encoded vector alone.
"""
from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from .. import nn
from .._functional import softmax_cross_entropy
from ..data import pad_sequences
from .base import Model, State, make_rnn, register_model

__all__ = ["Seq2Seq"]

Array = npt.NDArray[Any]
IntArray = npt.NDArray[np.int64]
Seqs = Sequence[Union[Sequence[int], IntArray]]  # id sequences: lists or 1-d int arrays

_IGNORE = -100  # softmax_cross_entropy's default ignore_index: padded target steps


def _log_softmax(z: Array) -> Array:
    """log softmax over the last axis (..., V), in float64."""
    z = z.astype(np.float64) - z.max(axis=-1, keepdims=True)  # (..., V)
    out: Array = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))  # (..., V)
    return out


class Memory(NamedTuple):
    """What attention looks at: the encoder's outputs and which of their steps are real."""

    values: Array  # (S, B, H): the top encoder layer's outputs (zero at padded steps)
    mask: Array  # (S, B) bool: True at each source's own steps


def _take(state: State, idx: IntArray) -> State:
    """The batch entries idx of a state (L, B, H) (or a pair of them)."""
    if isinstance(state, tuple):
        return (state[0][:, idx], state[1][:, idx])
    return state[:, idx]


def _take_memory(memory: Optional[Memory], idx: IntArray) -> Optional[Memory]:
    return None if memory is None else Memory(memory.values[:, idx], memory.mask[:, idx])


@register_model
class Seq2Seq(Model):
    """Encoder-decoder: ``src_embed`` -> ``encoder`` ; ``tgt_embed`` -> ``decoder`` -> ``head``.

    Both recurrent layers are of ``cell`` ("lstm", "gru", "rnn") with ``num_layers`` layers of
    ``hidden_size``. Token ids: ``pad`` pads both vocabularies; ``bos`` and ``eos`` are target
    tokens. Sequences are given as lists of id sequences (without bos/eos).

    ``attention``: None (the lecture's encoder-decoder: the encoded vector only) or "luong":
    an ``attention`` layer (`rnnkern.nn.LuongAttention`) between the decoder and the head, over
    the top encoder layer's outputs. Checkpoints saved without it load as before.
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, hidden_size: int = 128,
                 num_layers: int = 1, cell: str = "lstm", embed_dim: int = 32, pad: int = 0,
                 bos: int = 1, eos: int = 2, dtype: str = "float32",
                 seed: Optional[int] = None, attention: Optional[str] = None) -> None:
        super().__init__()
        self.config = {"src_vocab_size": src_vocab_size, "tgt_vocab_size": tgt_vocab_size,
                       "hidden_size": hidden_size, "num_layers": num_layers, "cell": cell,
                       "embed_dim": embed_dim, "pad": pad, "bos": bos, "eos": eos,
                       "dtype": str(np.dtype(dtype)), "seed": seed}
        if attention not in (None, "luong"):
            raise ValueError(f"attention: expected None or 'luong', got {attention!r}")
        if attention is not None:  # only then, so older checkpoints' configs stay equal
            self.config["attention"] = attention
        for name, tok in (("pad", pad), ("bos", bos), ("eos", eos)):
            if not 0 <= tok < tgt_vocab_size:
                raise ValueError(f"{name}: expected a target id in 0..{tgt_vocab_size - 1}, "
                                 f"got {tok}")
        self.pad, self.bos, self.eos = pad, bos, eos
        rng = np.random.default_rng(seed)
        self.src_embed: nn.Embedding = self._add("src_embed", nn.Embedding(
            src_vocab_size, embed_dim, dtype=dtype, seed=rng, padding_idx=pad))
        self.encoder = self._add(
            "encoder", make_rnn(cell, embed_dim, hidden_size, num_layers, 0.0, dtype, rng))
        self.tgt_embed: nn.Embedding = self._add("tgt_embed", nn.Embedding(
            tgt_vocab_size, embed_dim, dtype=dtype, seed=rng, padding_idx=pad))
        self.decoder = self._add(
            "decoder", make_rnn(cell, embed_dim, hidden_size, num_layers, 0.0, dtype, rng))
        self.head: nn.Linear = self._add(
            "head", nn.Linear(hidden_size, tgt_vocab_size, dtype=dtype, seed=rng))
        self.attention: Optional[nn.LuongAttention] = None
        if attention is not None:
            self.attention = self._add(
                "attention", nn.LuongAttention(hidden_size, dtype=dtype, seed=rng))

    # -- training -------------------------------------------------------------------------------

    def encode(self, src: Seqs, training: bool = False) -> State:
        """The encoder's final state for a batch of source sequences (each its own length)."""
        return self._encode(src, training)[0]

    def _encode(self, src: Seqs, training: bool) -> Tuple[State, Optional[Memory]]:
        """The encoder's final state, and the memory attention looks at (None without it)."""
        ids, lengths = pad_sequences(src, self.pad)  # (S, B), (B,)
        state: State
        y, state = self.encoder(self.src_embed(ids, training), lengths=lengths,
                                training=training)  # (S, B, H)
        if self.attention is None:
            return state, None
        return state, Memory(y, np.arange(len(ids))[:, None] < lengths[None, :])

    def _output(self, y: Array, memory: Optional[Memory], training: bool) -> Tuple[Array, Any]:
        """Decoder outputs y (T, B, H) -> logits (T, B, V), attention weights (B, T, S) or None."""
        weights = None
        if memory is not None and self.attention is not None:
            y, weights = self.attention(y, memory.values, memory.mask, training)  # (T, B, H)
        return self.head(y, training), weights

    def _teacher_forced(self, src: Seqs, tgt: Seqs, training: bool) -> Tuple[Any, Any]:
        if len(src) != len(tgt):
            raise ValueError(f"tgt: expected {len(src)} sequences like src, got {len(tgt)}")
        state, memory = self._encode(src, training)
        tgt_in, lengths = pad_sequences([[self.bos, *t] for t in tgt], self.pad)  # (T, B), (B,)
        tgt_out, _ = pad_sequences([[*t, self.eos] for t in tgt], _IGNORE)  # (T, B)
        y, _ = self.decoder(self.tgt_embed(tgt_in, training), state, lengths=lengths,
                            training=training)  # (T, B, H)
        logits, weights = self._output(y, memory, training)  # (T, B, V)
        ce = softmax_cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1))
        return ce, (logits.shape, weights)

    def loss(self, src: Seqs, tgt: Seqs) -> float:
        """Mean cross-entropy per target token (eos included) under teacher forcing."""
        ce, _ = self._teacher_forced(src, tgt, training=False)
        return float(ce.loss)

    def loss_and_backward(self, src: Seqs, tgt: Seqs) -> float:
        """`loss`, adding its gradients into `grads` (through the decoder into the encoder)."""
        ce, (shape, _) = self._teacher_forced(src, tgt, training=True)
        dy = self.head.backward(ce.dlogits.reshape(shape))  # (T, B, H)
        dvalues = None  # (S, B, H): the gradient reaching the encoder's outputs
        if self.attention is not None:
            dy, dvalues = self.attention.backward(dy)
        dx, dstate = self.decoder.backward(dy)  # (T, B, E), d(initial state)
        self.tgt_embed.backward(dx)
        dx_src, _ = self.encoder.backward(dvalues, dstate)  # (S, B, E)
        self.src_embed.backward(dx_src)
        return float(ce.loss)

    def attention_weights(self, src: Seqs, tgt: Seqs) -> List[Array]:
        """Where the decoder looks while it writes tgt: per pair, weights (len(tgt) + 1, len(src)).

        Row t is the distribution over the source tokens at output step t (the last row: when
        it writes eos); tgt may be the model's own output (then these are the weights greedy
        decoding used). Needs ``attention``.
        """
        if self.attention is None:
            raise ValueError("attention_weights: this model has no attention (attention=None)")
        _, (_, weights) = self._teacher_forced(src, tgt, training=False)  # (B, T, S)
        return [weights[b, :len(t) + 1, :len(s)] for b, (s, t) in enumerate(zip(src, tgt))]

    # -- decoding -------------------------------------------------------------------------------

    def _step(self, tokens: IntArray, state: State, memory: Optional[Memory]
              ) -> Tuple[Array, State]:
        """One decoder step: tokens (B,) -> log-probabilities (B, V) float64, next state.

        pad and bos get probability 0: the decoder only chooses real tokens and eos.
        """
        y, state = self.decoder(self.tgt_embed(tokens[None], False), state, training=False)
        logits, _ = self._output(y, memory, training=False)  # (1, B, V)
        logp = _log_softmax(logits[0])  # (B, V)
        logp[:, [self.pad, self.bos]] = -np.inf  # never emitted
        return logp, state

    def greedy(self, src: Seqs, max_len: int = 50) -> List[List[int]]:
        """The most likely token at every step, until eos (not included) or max_len tokens."""
        state, memory = self._encode(src, training=False)
        tokens = np.full(len(src), self.bos, dtype=np.int64)  # (B,)
        out: List[List[int]] = [[] for _ in src]
        done = np.zeros(len(src), dtype=bool)  # (B,)
        for _ in range(max_len):
            logp, state = self._step(tokens, state, memory)  # (B, V)
            tokens = logp.argmax(axis=1)
            for b in np.flatnonzero(~done):
                if tokens[b] == self.eos:
                    done[b] = True
                else:
                    out[b].append(int(tokens[b]))
            if done.all():
                break
        return out

    def beam_search(self, src: Seqs, beam_size: int = 4, max_len: int = 50,
                    length_penalty: float = 0.0) -> List[List[int]]:
        """Beam search per sequence; the best finished hypothesis by log p / len**length_penalty.

        Keeps the ``beam_size`` best unfinished hypotheses; a hypothesis finishes when eos is
        among the ``beam_size`` best extensions (so ``beam_size=1`` is greedy decoding).
        With ``length_penalty`` 0 the search stops as soon as no unfinished hypothesis can beat
        the best finished one (log-probabilities only fall as a hypothesis grows).
        """
        if beam_size < 1:
            raise ValueError(f"beam_size: expected a positive int, got {beam_size}")
        state, memory = self._encode(src, training=False)
        return [self._beam_one(_take(state, np.array([b])), _take_memory(memory, np.array([b])),
                               beam_size, max_len, length_penalty) for b in range(len(src))]

    def _beam_one(self, state: State, memory: Optional[Memory], beam_size: int, max_len: int,
                  alpha: float) -> List[int]:
        def norm(seq: List[int], score: float) -> float:
            return float(score / (len(seq) + 1) ** alpha)  # + 1: the eos token

        live: List[Tuple[List[int], float]] = [([], 0.0)]
        finished: List[Tuple[List[int], float]] = []
        for _ in range(max_len):
            tokens = np.array([seq[-1] if seq else self.bos for seq, _ in live], np.int64)  # (k,)
            logp, state = self._step(tokens, state, memory)  # (k, V)
            scores = np.array([s for _, s in live])[:, None] + logp  # (k, V)
            order = np.argsort(-scores, axis=None)[:2 * beam_size]  # best candidates first
            parents: List[int] = []
            new_live: List[Tuple[List[int], float]] = []
            for rank, flat in enumerate(order):
                k, tok = divmod(int(flat), scores.shape[1])
                seq, score = live[k][0], float(scores[k, tok])
                if tok == self.eos:
                    if rank < beam_size:  # an eos among the best beam_size ends a hypothesis
                        finished.append((seq, score))
                elif len(new_live) < beam_size:
                    new_live.append(([*seq, tok], score))
                    parents.append(k)
            live = new_live
            best_done = max((norm(*f) for f in finished), default=-np.inf)
            if not live or len(finished) >= beam_size or (
                    alpha == 0.0 and max(s for _, s in live) <= best_done):
                break
            state = _take(state, np.array(parents))
            memory = _take_memory(memory, np.array(parents))
        pool = finished or live
        return max(pool, key=lambda f: norm(*f))[0]
