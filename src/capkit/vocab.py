"""Caption cleaning and the word vocabulary (saved as `word_to_id.json`)."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from adapt.errors import UserError
from adapt.runio import read_json, write_json

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)

_NOT_WORD = re.compile(r"[^a-z0-9' ]+")


def clean_caption(text: str) -> str:
    """Lowercase, keep letters/digits/apostrophes, turn everything else into spaces, squeeze spaces.

    Hyphenated words are split ("tri-colored" → "tri colored") and one-letter tokens other than
    "a" are dropped (stray "s" from possessives, punctuation leftovers).
    """
    words = _NOT_WORD.sub(" ", text.lower().replace("-", " ")).split()
    words = [w.strip("'") for w in words]
    return " ".join(w for w in words if len(w) > 1 or w == "a")


class Vocab:
    """Word ↔ id mapping with pad/start/end/unknown specials at ids 0–3."""

    def __init__(self, words: Sequence[str]):
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise UserError(f"vocabulary must start with {', '.join(SPECIALS)}")
        self.words = list(words)
        self.word_to_id = {w: i for i, w in enumerate(self.words)}
        if len(self.word_to_id) != len(self.words):
            raise UserError("vocabulary has duplicate words")
        self.pad_id, self.start_id, self.end_id, self.unk_id = range(4)

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.words == other.words

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 2) -> Vocab:
        """Words seen at least `min_count` times in the (cleaned) captions, most frequent first."""
        counts = Counter(w for c in captions for w in clean_caption(c).split())
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *kept])

    def encode(self, text: str) -> list[int]:
        """Cleaned words → ids (unknown words → unk_id); no start/end tokens."""
        return [self.word_to_id.get(w, self.unk_id) for w in clean_caption(text).split()]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → text: stops at the end token, skips pad and start."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
                continue
            out.append(self.words[i] if 0 <= i < len(self.words) else UNK)
        return " ".join(out)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write `word_to_id.json` (atomically)."""
        return write_json(path, self.word_to_id)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocab:
        mapping = read_json(path)
        if not isinstance(mapping, dict) or sorted(mapping.values()) != list(range(len(mapping))):
            raise UserError(f"{path}: not a word_to_id.json (expected words mapped to ids 0..N-1)")
        return cls(sorted(mapping, key=mapping.__getitem__))
