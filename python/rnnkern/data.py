"""Data for the examples and the command line: corpora, vocabularies, batching, built-in tasks.

- `default_corpus()`: text made of the Python standard library's own ``.py`` files (every
  Python installation has them, nothing is downloaded), chosen deterministically.
- `Vocab`: token <-> id maps (characters for the language model, words for seq2seq sources).
- `batchify` / `bptt_batches`: a long token stream cut into B parallel columns and chunks of
  T steps for truncated backpropagation through time (the state carries from chunk to chunk).
- `NumberWords`: the seq2seq task "three hundred and twelve" -> "312".
- `longrange_batch`: the lecture's "brown and black dog ... german shepherd" task: the first
  token decides the answer at the end of a sequence of T tokens.
- `Reversal`, `reversal_model`, `train_reversal`: the attention task (30 to 40 letters -> the
  same letters reversed) and its encoder-decoder, trained with or without attention.
- `JumbledSentences`: the lecture's opening ("POLICY IS THE BEST HONESTY"): sentences of a
  built-in English grammar (`rnnkern.sentences`), shown as written or jumbled.
"""
from __future__ import annotations

import os
import re
import sysconfig
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from .sentences import Grammar

__all__ = [
    "stdlib_dir", "default_corpus", "Vocab", "split_ids", "batchify", "bptt_batches",
    "pad_sequences", "number_to_words", "NumberWords", "LONGRANGE_CUES", "LONGRANGE_FILLER",
    "longrange_batch", "Reversal", "reversal_model", "train_reversal", "tokenize_sentence",
    "jumble_order", "JumbledSentences", "LECTURE_JUMBLED", "LECTURE_WRITTEN",
]

IntArray = npt.NDArray[np.int64]


# -- corpus ---------------------------------------------------------------------------------------

def stdlib_dir() -> Path:
    """The directory of the running Python's standard library sources."""
    path = sysconfig.get_paths().get("stdlib") or os.path.dirname(os.__file__)
    return Path(path)


def default_corpus(max_chars: int = 2_000_000, directory: Optional[Path] = None) -> str:
    """The standard library's top-level ``.py`` files, concatenated, at most ``max_chars`` chars.

    Deterministic: files in sorted name order, only pure-ASCII ones (so the vocabulary stays
    about 100 characters), each ending with a newline; the last one is cut at ``max_chars``.
    ``_sysconfigdata*.py`` (the interpreter's build settings, not code) is left out, so the
    text is the same for every installation of the same Python version.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars: expected a positive int, got {max_chars}")
    root = stdlib_dir() if directory is None else Path(directory)
    parts: list[str] = []
    total = 0
    for path in sorted(root.glob("*.py")):
        if path.name.startswith("_sysconfigdata"):  # the build's configuration, not code
            continue
        raw = path.read_bytes()
        if not raw.isascii():
            continue
        text = raw.decode("ascii").replace("\r\n", "\n")
        if not text.endswith("\n"):
            text += "\n"
        parts.append(text[:max_chars - total])
        total += len(parts[-1])
        if total >= max_chars:
            break
    if not parts:
        raise ValueError(f"directory: no ASCII .py files found in {root}")
    return "".join(parts)


# -- vocabulary ------------------------------------------------------------------------------------

class Vocab:
    """A fixed list of tokens; ``encode`` maps tokens to ids (their positions), ``decode`` back.

    Characters (``Vocab.from_text(text)``, ``sep=""``) or words (``sep=" "``): ``decode`` joins
    the tokens with ``sep``. ``specials`` come first (ids 0, 1, ...), e.g. pad, bos, eos.
    """

    def __init__(self, tokens: Sequence[str], sep: str = "") -> None:
        self.tokens = list(tokens)
        self.sep = sep
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("tokens: must be distinct")

    @classmethod
    def from_text(cls, text: str, specials: Sequence[str] = ()) -> "Vocab":
        """A character vocabulary: the specials, then the text's characters in sorted order."""
        return cls([*specials, *sorted(set(text) - set(specials))], sep="")

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self.index

    def encode(self, tokens: Iterable[str], name: str = "text") -> IntArray:
        """Tokens (a str for a character vocabulary) -> ids (N,) int64.

        Raises ValueError naming ``name`` for a token not in the vocabulary.
        """
        try:
            return np.fromiter((self.index[t] for t in tokens), dtype=np.int64)
        except KeyError as err:
            raise ValueError(f"{name}: token {err.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: Iterable[Any]) -> str:
        """Ids -> the tokens joined with ``sep``."""
        return self.sep.join(self.tokens[int(i)] for i in ids)


def split_ids(ids: IntArray, val_fraction: float) -> Tuple[IntArray, IntArray]:
    """The stream cut into (train, validation): the last ``val_fraction`` is validation."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a number in (0, 1), got {val_fraction}")
    cut = int(round(len(ids) * (1.0 - val_fraction)))
    return ids[:cut], ids[cut:]


# -- truncated BPTT batching -----------------------------------------------------------------------

def batchify(ids: IntArray, batch_size: int) -> IntArray:
    """A stream (N,) as B contiguous columns (N // B, B); column b continues row by row.

    Row t of column b is ids[b * (N // B) + t], so chunk k + 1 continues chunk k in every column
    and the recurrent state can be carried from one chunk to the next.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size}")
    n = len(ids) // batch_size
    if n < 2:
        raise ValueError(f"ids: {len(ids)} tokens are too few for batch_size {batch_size}")
    return np.ascontiguousarray(ids[:n * batch_size].reshape(batch_size, n).T)  # (N // B, B)


def bptt_batches(columns: IntArray, seq_len: int) -> Iterator[Tuple[IntArray, IntArray]]:
    """One pass over ``batchify``'s columns: (inputs, targets), each (T, B), targets one ahead.

    T = seq_len except for a shorter last chunk.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len: expected a positive int, got {seq_len}")
    for start in range(0, len(columns) - 1, seq_len):
        stop = min(start + seq_len, len(columns) - 1)
        yield columns[start:stop], columns[start + 1:stop + 1]  # (T, B), (T, B)


def pad_sequences(seqs: Sequence[Union[Sequence[int], IntArray]], pad: int
                  ) -> Tuple[IntArray, IntArray]:
    """Id sequences -> time-major padded ids (T, B) int64, T the longest length; lengths (B,)."""
    if not seqs:
        raise ValueError("seqs: expected at least one sequence")
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)  # (B,)
    if lengths.min() < 1:
        raise ValueError("seqs: every sequence must have at least one token")
    out = np.full((int(lengths.max()), len(seqs)), pad, dtype=np.int64)  # (T, B)
    for b, s in enumerate(seqs):
        out[:len(s), b] = s
    return out, lengths


# -- seq2seq task: numbers in words -> digits ------------------------------------------------------

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def _below_thousand(n: int, and_first: bool) -> list[str]:
    """Words of 1 <= n <= 999 (British style: "three hundred and twelve")."""
    words: list[str] = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [_ONES[hundreds], "hundred"]
    if rest and (hundreds or and_first):
        words.append("and")
    if rest >= 20:
        words.append(_TENS[rest // 10])
        if rest % 10:
            words.append(_ONES[rest % 10])
    elif rest:
        words.append(_ONES[rest])
    return words


def number_to_words(n: int) -> list[str]:
    """0 <= n < 10**9 in English words, British style, e.g. 3012 -> three thousand and twelve.

    Compound tens are two words ("ninety nine"), so every word is a vocabulary token.
    """
    if not 0 <= n < 10**9:
        raise ValueError(f"n: expected 0 <= n < 10**9, got {n}")
    if n == 0:
        return ["zero"]
    millions, rest = divmod(n, 10**6)
    thousands, units = divmod(rest, 1000)
    words: list[str] = []
    if millions:
        words += _below_thousand(millions, False) + ["million"]
    if thousands:
        words += _below_thousand(thousands, bool(millions) and thousands < 100) + ["thousand"]
    if units:
        words += _below_thousand(units, bool(millions or thousands) and units < 100)
    return words


class NumberWords:
    """Numbers 0..max_value spelled out in words -> their digits (the built-in seq2seq task).

    Source tokens: the number words (pad = 0); target tokens: the digits (pad 0, bos 1, eos 2).
    A fixed tenth of the numbers (chosen by a hash, the same every run) is held out: ``sample``
    draws training pairs only from the rest and test pairs only from the held-out ones.
    """

    SRC_WORDS = ["<pad>", *_ONES, *_TENS[2:], "hundred", "thousand", "million", "and"]
    TGT_TOKENS = ["<pad>", "<bos>", "<eos>", *"0123456789"]
    PAD, BOS, EOS = 0, 1, 2

    def __init__(self, max_value: int = 999_999) -> None:
        if not 1 <= max_value < 10**9:
            raise ValueError(f"max_value: expected 1 <= max_value < 10**9, got {max_value}")
        self.max_value = int(max_value)
        first = self.held_out(np.arange(min(self.max_value, 10_000) + 1))  # (N,)
        if first.all() or not first.any():
            raise ValueError(f"max_value: {max_value} is too small for a train/test split")
        self.src_vocab = Vocab(self.SRC_WORDS, sep=" ")
        self.tgt_vocab = Vocab(self.TGT_TOKENS, sep="")

    @staticmethod
    def held_out(n: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Whether each number belongs to the test split (a fixed multiplicative hash)."""
        h = (n.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2**32)
        return np.asarray((h >> np.uint64(16)) % np.uint64(10) == 0, dtype=np.bool_)

    def sample(self, rng: np.random.Generator, count: int, split: str = "train"
               ) -> Tuple[list[IntArray], list[IntArray], npt.NDArray[np.int64]]:
        """``count`` random pairs of the split: (source ids, target digit ids, the numbers)."""
        if split not in ("train", "test"):
            raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
        chosen: list[npt.NDArray[np.int64]] = []
        need = count
        while need > 0:
            n = rng.integers(0, self.max_value + 1, size=2 * need + 16)  # (M,)
            n = n[self.held_out(n) == (split == "test")][:need]
            chosen.append(n)
            need -= len(n)
        numbers = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)  # (count,)
        src = [self.src_vocab.encode(number_to_words(int(v))) for v in numbers]
        tgt = [self.tgt_vocab.encode(str(int(v))) for v in numbers]
        return src, tgt, numbers


# -- attention task: reverse a long sequence -------------------------------------------------------

class Reversal:
    """Random letters -> the same letters reversed: "c a f ... b" -> "b ... f a c".

    Lengths ``min_len``..``max_len`` (30..40 by default), letters from the first ``letters`` of
    the alphabet. Every output token depends on one input token far away in the sequence, so an
    encoder-decoder without attention must squeeze them all into its one encoded vector. Source
    tokens: pad (0) and the letters; target tokens: pad, bos, eos (0, 1, 2) and the letters.
    A fixed tenth of all sequences (by a CRC-32 of the letters) is held out: ``sample`` draws
    training sequences only from the rest and test sequences only from the held-out ones.
    """

    PAD, BOS, EOS = 0, 1, 2

    def __init__(self, min_len: int = 30, max_len: int = 40, letters: int = 20) -> None:
        if not 1 <= min_len <= max_len:
            raise ValueError(f"min_len, max_len: expected 1 <= min_len <= max_len, got "
                             f"{min_len}, {max_len}")
        if not 2 <= letters <= 26:
            raise ValueError(f"letters: expected 2..26, got {letters}")
        self.min_len, self.max_len = min_len, max_len
        alphabet = [chr(ord("a") + i) for i in range(letters)]
        self.src_vocab = Vocab(["<pad>", *alphabet], sep=" ")
        self.tgt_vocab = Vocab(["<pad>", "<bos>", "<eos>", *alphabet], sep=" ")

    @staticmethod
    def held_out(letters: IntArray) -> bool:
        """Whether a sequence of letter ids (N,) belongs to the test split."""
        return zlib.crc32(np.ascontiguousarray(letters, dtype=np.int64).tobytes()) % 10 == 0

    def sample(self, rng: np.random.Generator, count: int, split: str = "train"
               ) -> Tuple[List[IntArray], List[IntArray]]:
        """``count`` random pairs of the split: (source ids, target ids), each (N,) int64."""
        if split not in ("train", "test"):
            raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
        letters = len(self.src_vocab) - 1
        src: List[IntArray] = []
        while len(src) < count:
            n = int(rng.integers(self.min_len, self.max_len + 1))
            seq = rng.integers(0, letters, size=n)  # (n,) letter index
            if self.held_out(seq) == (split == "test"):
                src.append(seq + 1)  # source ids: 1.. (0 is pad)
        return src, [s[::-1] + 2 for s in src]  # target ids: 3.. (after pad, bos, eos)


def reversal_model(task: Reversal, attention: Optional[str] = None, *, hidden_size: int = 64,
                   embed_dim: int = 32, cell: str = "lstm", seed: int = 0) -> Any:
    """The attention task's encoder-decoder, untrained: a `Seq2Seq` for the task's vocabularies,
    with ``attention`` None (the final state only) or "luong"."""
    from .models import Seq2Seq  # here, not above: rnnkern.models imports this module

    return Seq2Seq(len(task.src_vocab), len(task.tgt_vocab), hidden_size=hidden_size, cell=cell,
                   embed_dim=embed_dim, pad=task.PAD, bos=task.BOS, eos=task.EOS, seed=seed,
                   attention=attention)


def train_reversal(task: Reversal, attention: Optional[str] = None, *, hidden_size: int = 64,
                   embed_dim: int = 32, cell: str = "lstm", batch: int = 64, lr: float = 3e-3,
                   clip: float = 5.0, seed: int = 0, steps: Optional[int] = None,
                   progress: Optional[Callable[[int], float]] = None,
                   on_step: Optional[Callable[[Any, int, float], None]] = None
                   ) -> Tuple[Any, int]:
    """The attention task's encoder-decoder, trained: returns (the `Seq2Seq`, steps taken).

    `reversal_model` with ``attention`` None or "luong", trained with Adam on fresh
    training batches, the gradients' norm clipped at ``clip``, the learning rate falling
    linearly from ``lr`` to 0 over the budget: ``steps`` steps, or until ``progress(step)``
    (the fraction of some other budget used, e.g. of the time) reaches 1; with both, whichever
    is further along. ``on_step(model, step, loss)`` after each step.
    """
    from . import optim  # here, not above: rnnkern.models imports this module

    if steps is None and progress is None:
        raise ValueError("steps, progress: give at least one of them")

    def done(step: int) -> float:  # the fraction of the budget used
        return max(0.0 if steps is None else step / steps,
                   0.0 if progress is None else progress(step))

    model = reversal_model(task, attention, hidden_size=hidden_size, embed_dim=embed_dim,
                           cell=cell, seed=seed)
    opt = optim.Adam(model.params, model.grads, lr=lr)
    rng = np.random.default_rng(seed)
    step = 0
    while (fraction := done(step)) < 1.0:
        opt.lr = lr * (1.0 - fraction)
        model.zero_grad()
        loss = model.loss_and_backward(*task.sample(rng, batch, "train"))
        optim.clip_grad_norm(model.grads, clip)
        opt.step()
        step += 1
        if on_step is not None:
            on_step(model, step, loss)
    return model, step


# -- long-range task: the first token decides the answer -------------------------------------------

LONGRANGE_CUES = ["brown", "golden"]  # token 0 -> "german shepherd", token 1 -> "retriever"
LONGRANGE_FILLER = ["and", "black", "dog", "which", "was", "playing", "with", "the", "cat", "a"]


def longrange_batch(rng: np.random.Generator, batch: int, steps: int
                    ) -> Tuple[IntArray, IntArray]:
    """The lecture's "brown and black dog ... german shepherd" task as a batch.

    Returns tokens (T, B) int64 and labels (B,) int64: token 0 of each sequence is a cue
    (id 0 or 1 = the label), the T - 1 tokens after it are filler words (ids 2..11) drawn at
    random, and the answer must be given after the last one. Chance accuracy is 50%.
    """
    if steps < 2:
        raise ValueError(f"steps: expected at least 2, got {steps}")
    labels = rng.integers(0, len(LONGRANGE_CUES), size=batch)  # (B,)
    tokens = rng.integers(len(LONGRANGE_CUES), len(LONGRANGE_CUES) + len(LONGRANGE_FILLER),
                          size=(steps, batch))  # (T, B)
    tokens[0] = labels
    return tokens.astype(np.int64), labels.astype(np.int64)


# -- jumbled sentences: does word order carry meaning? ---------------------------------------------

_TOKEN = re.compile(r"[a-z0-9_]+(?:'[a-z]+)?|,")  # lowercase words (with 's, n't ...) and commas


def tokenize_sentence(text: str) -> List[str]:
    """Lowercase word tokens and commas of a sentence (other punctuation dropped)."""
    return _TOKEN.findall(text.lower())


def jumble_order(ids: IntArray, rng: np.random.Generator, swap: bool = False) -> IntArray:
    """A permutation (N,) of a sentence's positions that changes its ids (N,) (N >= 2).

    All words shuffled, or (``swap``) two different words swapped; either way ``ids[order]``
    differs from ``ids`` (ValueError if every id is the same).
    """
    ids = np.asarray(ids)
    if len(ids) < 2 or (ids == ids[0]).all():
        raise ValueError(f"ids: need at least two different tokens to jumble, got {ids.tolist()}")
    order = np.arange(len(ids))  # (N,)
    if swap:
        u, v = rng.random(2).tolist()
        i = int(u * len(ids))
        others = np.flatnonzero(ids != ids[i])  # (M,): where a different word is
        j = int(others[int(v * len(others))])
        order[i], order[j] = j, i
    else:
        while (ids[order] == ids).all():
            order = rng.permutation(len(ids))
    return order


# The lecture's opening slides: its jumbled sentences, and each of them put right.
LECTURE_JUMBLED = [
    "YOU DON'T HAVE TO BE WELL TO TRAVEL RICH",
    "IF I'M BAD , YOU'RE MY DAD",
    "POLICY IS THE BEST HONESTY",
    "HEALTH IS INJURIOUS TO SMOKING",
    "IF OPPORTUNITY DOESN'T DOOR THEN BUILD A KNOCK",
]
LECTURE_WRITTEN = [
    "YOU DON'T HAVE TO BE RICH TO TRAVEL WELL",
    "IF YOU'RE BAD , I'M YOUR DAD",
    "HONESTY IS THE BEST POLICY",
    "SMOKING IS INJURIOUS TO HEALTH",
    "IF OPPORTUNITY DOESN'T KNOCK THEN BUILD A DOOR",
]


class JumbledSentences:
    """The lecture's opening as a task: is this sentence as written, or are its words jumbled?

    Sentences are those of `rnnkern.sentences.Grammar` (built-in English: people and things,
    the lecture's proverbs; about 8 words each). A sentence is held out if a CRC-32 of its text
    is 0 mod 10, or if it is one of the lecture's sentences put right (`LECTURE_WRITTEN`):
    training draws fresh sentences from the grammar for every batch and skips the held-out ones,
    so no test sentence is ever seen in training. ``test``: the lecture's sentences, then
    held-out sentences drawn with a fixed seed, ``test_size`` distinct ones in all.

    Jumbled (label 1) means the words shuffled or two different words swapped, and the result
    not a sentence of the grammar (a jumble that is one, e.g. two people swapped, is drawn
    again), so every label is right and a jumbled sentence has the same bag of words as the
    original. Ids: ``<pad>`` 0, ``<unk>`` 1 (words outside the grammar), then its words.
    """

    PAD, UNK = 0, 1

    def __init__(self, test_size: int = 1000, shuffle_prob: float = 0.5) -> None:
        if not len(LECTURE_WRITTEN) <= test_size <= 20_000:
            raise ValueError(f"test_size: expected {len(LECTURE_WRITTEN)} (the lecture's "
                             f"sentences) to 20000, got {test_size}")
        if not 0.0 <= shuffle_prob <= 1.0:
            raise ValueError(f"shuffle_prob: expected a number in [0, 1], got {shuffle_prob}")
        self.shuffle_prob = shuffle_prob
        self.grammar = Grammar()
        self.vocab = Vocab(["<pad>", "<unk>", *self.grammar.words], sep=" ")
        self._lecture = {" ".join(tokenize_sentence(t)) for t in LECTURE_WRITTEN}
        self.test = [tokenize_sentence(t) for t in LECTURE_WRITTEN]
        seen = set(self._lecture)
        rng = np.random.default_rng(20_150_901)  # the same test set every run
        while len(self.test) < test_size:
            words = self.grammar.sample(rng)
            text = " ".join(words)
            if text not in seen and self.held_out(words):
                seen.add(text)
                self.test.append(words)

    def held_out(self, words: Sequence[str]) -> bool:
        """Whether a sentence belongs to the test split (never drawn for training)."""
        text = " ".join(words)
        return zlib.crc32(text.encode()) % 10 == 0 or text in self._lecture

    def sentence(self, rng: np.random.Generator) -> List[str]:
        """A training sentence: drawn from the grammar, never a held-out one."""
        while True:
            words = self.grammar.sample(rng)
            if not self.held_out(words):
                return words

    def encode(self, words: Sequence[str]) -> IntArray:
        """Words -> ids (N,), ``<unk>`` for words outside the vocabulary."""
        return np.array([self.vocab.index.get(w, self.UNK) for w in words], dtype=np.int64)

    def jumble(self, words: Sequence[str], rng: np.random.Generator, swap: bool = False
               ) -> List[str]:
        """The words shuffled (``swap``: two different words swapped) into a non-sentence."""
        ids = self.encode(words)
        for _ in range(1000):
            out = [words[i] for i in jumble_order(ids, rng, swap)]
            if not self.grammar.is_sentence(out):
                return out
        raise ValueError(f"words: every jumble of {' '.join(words)!r} tried is a sentence")

    def examples(self, rng: np.random.Generator, sentences: Sequence[Sequence[str]],
                 jumbled: npt.NDArray[np.bool_]
                 ) -> Tuple[List[IntArray], IntArray, List[List[str]]]:
        """The sentences as shown: their ids, kinds (B,) and words in the order shown.

        ``jumbled`` (B,) says which to jumble; of those, a fraction ``shuffle_prob`` (at random)
        are shuffled, the others have two words swapped. Kinds: 0 as written, 1 shuffled, 2 two
        words swapped; a model learns label = kind > 0.
        """
        shuffled = rng.random(len(sentences)) < self.shuffle_prob  # (B,)
        kinds = np.where(jumbled, np.where(shuffled, 1, 2), 0).astype(np.int64)  # (B,)
        words = [self.jumble(s, rng, swap=k == 2) if k else list(s)
                 for s, k in zip(sentences, kinds)]
        return [self.encode(w) for w in words], kinds, words

    def pairs(self, rng: np.random.Generator, sentences: Sequence[Sequence[str]]
              ) -> Tuple[List[IntArray], IntArray, List[List[str]]]:
        """Every sentence twice, as written and then jumbled (after all the written ones):
        `examples` of 2B sentences, so the labels (kinds > 0) are half 0, half 1.

        Pairs leave the words themselves no clue: every sentence is there once with each label,
        so only the order of its words can tell them apart, and a model blind to order (a bag of
        words) gets exactly half of them right.
        """
        jumbled = np.arange(2 * len(sentences)) >= len(sentences)  # (2B,)
        return self.examples(rng, [*sentences, *sentences], jumbled)

    def batch(self, rng: np.random.Generator, size: int) -> Tuple[List[IntArray], IntArray]:
        """``pairs`` of ``size`` // 2 fresh training sentences: ids and labels (size // 2 * 2,)."""
        ids, kinds, _ = self.pairs(rng, [self.sentence(rng) for _ in range(size // 2)])
        return ids, (kinds > 0).astype(np.int64)
