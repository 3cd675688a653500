"""A small English grammar for the lecture's opening ("POLICY IS THE BEST HONESTY"): it writes
sentences, and tells whether a word sequence is one of its sentences.

A sentence is a frame (below) with each CATEGORY replaced by one of its words or phrases; a
category marked ``?`` may be left out. Word order decides membership: "the old farmer found the
red key" is a sentence, "the red farmer found the old key" is not (adjectives of things and of
people differ), nor is "the key found the farmer" (only people and animals act). The lecture's
jumbled sentences, put right, are sentences of the grammar ("honesty is the best policy",
"smoking is injurious to health", ...); as the lecture jumbles them, they are not.

Everything is built in (no download); `is_sentence` is exact (a regular expression per frame).
"""
from __future__ import annotations

import re
from typing import Dict, List, NamedTuple, Sequence, Tuple

import numpy as np

__all__ = ["CATEGORIES", "FRAMES", "Grammar"]

CATEGORIES: Dict[str, Tuple[str, ...]] = {
    # people and animals (they act) and things (they are acted on)
    "AGENT": ("dog", "cat", "boy", "girl", "farmer", "teacher", "baker", "doctor", "child",
              "pilot", "student", "king", "queen", "sailor", "painter", "nurse", "fox", "horse",
              "neighbour", "tourist", "waiter", "fisherman"),
    "AGENT_ADJ": ("old", "young", "tall", "tired", "happy", "clever", "brave", "little", "lazy",
                  "kind", "angry", "proud"),
    "THING": ("ball", "box", "book", "cup", "hat", "key", "letter", "basket", "chair", "lamp",
              "map", "coat", "bottle", "bag", "pen", "ring", "cake", "kite", "parcel", "candle",
              "blanket", "bucket"),
    "THING_ADJ": ("red", "heavy", "wooden", "broken", "shiny", "blue", "new", "small", "green",
                  "dusty", "golden", "paper"),
    "VERB_T": ("found", "carried", "dropped", "bought", "sold", "washed", "lost", "hid", "took",
               "kept", "brought", "painted", "opened", "mended", "wrapped", "borrowed"),
    "VERB_I": ("slept", "laughed", "sang", "danced", "waited", "smiled", "cried", "worked",
               "walked", "rested", "shouted", "whistled"),
    "MANNER": ("quietly", "loudly", "happily", "slowly", "quickly", "calmly", "softly",
               "patiently"),
    "PLACE": ("in the garden", "at the market", "near the river", "on the hill",
              "in the kitchen", "at the station", "by the lake", "in the village",
              "under the bridge", "behind the house"),
    "TIME": ("yesterday", "this morning", "last night", "on monday", "after lunch",
             "before dinner", "at noon", "in the evening"),
    # the lecture's proverbs and sayings, put right
    "VIRTUE": ("honesty", "patience", "laughter", "silence", "experience", "practice",
               "kindness", "prevention", "time", "simplicity", "courage", "hope"),
    "ROLE": ("policy", "medicine", "teacher", "cure", "answer", "revenge", "healer", "gift",
             "guide", "defence"),
    "HARMFUL": ("smoking", "drinking", "stress", "worry", "junk food", "sugar", "noise"),
    "HARM_ADJ": ("injurious", "harmful", "dangerous"),
    "HEALTHY": ("exercise", "walking", "swimming", "sleep", "fruit", "cycling", "fresh air"),
    "BODY": ("health", "the heart", "the lungs", "the skin", "the teeth", "the mind",
             "the body", "the eyes"),
    "QUALITY": ("rich", "young", "famous", "tall", "strong", "clever", "perfect", "brave"),
    "ACTIVITY": ("travel", "sing", "dance", "cook", "write", "paint", "swim", "run", "live",
                 "laugh", "learn"),
    "HOW": ("well", "far", "often", "happily", "beautifully", "freely"),
    "COND": ("opportunity doesn't knock", "the bus doesn't come", "the rain doesn't stop",
             "the phone doesn't ring", "the door doesn't open", "the plan doesn't work",
             "the river doesn't freeze", "the wind doesn't blow"),
    "ACTION": ("build a door", "take a taxi", "buy an umbrella", "write a letter",
               "find a key", "make a new plan", "build a bridge", "row a boat", "call a friend",
               "light a candle"),
    "STATE": ("bad", "lost", "cold", "hungry", "sad", "tired", "sick", "lonely", "late",
              "bored"),
    "HELPER": ("dad", "friend", "map", "coat", "cook", "doctor", "guide", "driver", "clown",
               "blanket"),
}

# (weight, frame): UPPERCASE words are categories, ``?`` marks one that may be left out.
FRAMES: Tuple[Tuple[float, str], ...] = (
    (4.0, "the AGENT_ADJ? AGENT VERB_T the THING_ADJ? THING PLACE? TIME?"),
    (3.0, "the AGENT_ADJ? AGENT VERB_I MANNER? PLACE? TIME?"),
    (2.0, "the AGENT_ADJ? AGENT gave the AGENT_ADJ? AGENT a THING_ADJ? THING TIME?"),
    (1.0, "the THING_ADJ? THING was PLACE TIME?"),
    (2.0, "the AGENT who VERB_T the THING_ADJ? THING was AGENT_ADJ"),
    (1.5, "TIME , the AGENT_ADJ? AGENT VERB_I PLACE?"),
    (2.0, "VIRTUE is the best ROLE"),
    (1.0, "HARMFUL is HARM_ADJ to BODY"),
    (0.5, "HARMFUL is bad for BODY"),
    (0.5, "HEALTHY is good for BODY"),
    (1.5, "you don't have to be QUALITY to ACTIVITY HOW"),
    (1.0, "if COND then ACTION"),
    (0.5, "if COND , ACTION"),
    (1.0, "if you're STATE , i'm your HELPER"),
)


class _Slot(NamedTuple):
    """One part of a frame: a literal word (one choice) or a category's words and phrases."""

    choices: Tuple[Tuple[str, ...], ...]  # each a word or phrase, split into words
    optional: bool

    def pattern(self) -> str:
        """A regular expression over " word word ...": each choice after a space, so a slot
        left out leaves no trace."""
        alternatives = "|".join(re.escape(" ".join(c)) for c in self.choices)
        return f"(?: (?:{alternatives})){'?' if self.optional else ''}"


class Grammar:
    """`sample` writes sentences (lists of words); `is_sentence` tells whether words are one."""

    def __init__(self, categories: Dict[str, Tuple[str, ...]] = CATEGORIES,
                 frames: Sequence[Tuple[float, str]] = FRAMES) -> None:
        self.frames: List[List[_Slot]] = []
        for _, frame in frames:
            slots = []
            for part in frame.split():
                name = part.rstrip("?")
                if not name.isupper():
                    slots.append(_Slot(((part,),), False))
                elif name in categories:
                    slots.append(_Slot(tuple(tuple(c.split()) for c in categories[name]),
                                       part.endswith("?")))
                else:
                    raise ValueError(f"frames: unknown category {name!r} in {frame!r}")
            self.frames.append(slots)
        weights = np.cumsum([w for w, _ in frames])  # (F,)
        self._cumulative = weights / weights[-1]  # (F,): a frame by one uniform draw
        self._longest = max(len(f) for f in self.frames)
        self._regex = re.compile("|".join(
            "(?:" + "".join(slot.pattern() for slot in f) + ")" for f in self.frames))
        self.words: List[str] = sorted({w for f in self.frames for slot in f
                                        for c in slot.choices for w in c})  # every word used

    def is_sentence(self, words: Sequence[str]) -> bool:
        """Whether the words, in this order, are a sentence of the grammar."""
        return self._regex.fullmatch(" " + " ".join(words)) is not None

    def sample(self, rng: np.random.Generator) -> List[str]:
        """One sentence: a frame by weight, each optional slot kept with probability 1/2, each
        slot's word or phrase uniformly."""
        u = rng.random(1 + 2 * self._longest).tolist()  # one draw for the whole sentence
        frame = self.frames[int(np.searchsorted(self._cumulative, u[0], side="right"))]
        words: List[str] = []
        for k, slot in enumerate(frame):
            if not slot.optional or u[1 + 2 * k] < 0.5:
                words += slot.choices[int(u[2 + 2 * k] * len(slot.choices))]
        return words
