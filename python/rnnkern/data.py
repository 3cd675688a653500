"""Data for the examples and the command line: corpora, vocabularies, batching, built-in tasks.

- `default_corpus()`: text made of the Python standard library's own ``.py`` files (every
  Python installation has them, nothing is downloaded), chosen deterministically.
- `Vocab`: token <-> id maps (characters for the language model, words for seq2seq sources).
- `batchify` / `bptt_batches`: a long token stream cut into B parallel columns and chunks of
  T steps for truncated backpropagation through time (the state carries from chunk to chunk).
- `NumberWords`: the seq2seq task "three hundred and twelve" -> "312".
- `longrange_batch`: the lecture's "brown and black dog ... german shepherd" task: the first
  token decides the answer at the end of a sequence of T tokens.
"""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__all__ = [
    "stdlib_dir", "default_corpus", "Vocab", "split_ids", "batchify", "bptt_batches",
    "pad_sequences", "number_to_words", "NumberWords", "LONGRANGE_CUES", "LONGRANGE_FILLER",
    "longrange_batch",
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
