"""Pure answer-quality measures (no model needed): the source's failure modes, made countable.

The source saw its models switch to English mid-answer, repeat words, and ramble; these measure
exactly that: the share of Persian-script letters, the rate of repeated word 3-grams, and the
share of answers that ended on their own before the length limit. A small model that has learnt
the chat format but not to answer copies the question back, which none of those three sees; the
share of answer 2-grams copied from the prompt does. Whether an answer says what the reference
answer says is measured by chrF (character n-gram F-score, sacrebleu's chrF2), the usual choice for
morphologically rich languages such as Persian: it needs no judge model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

# Arabic script blocks used by Persian (base, supplement, presentation forms A and B)
_PERSIAN_RANGES = ((0x0600, 0x06FF), (0x0750, 0x077F), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF))


def is_persian_letter(ch: str) -> bool:
    """True for a letter of the Arabic script (the one Persian is written in)."""
    cp = ord(ch)
    return ch.isalpha() and any(lo <= cp <= hi for lo, hi in _PERSIAN_RANGES)


def letter_counts(text: str) -> tuple[int, int]:
    """(Persian-script letters, all letters) of `text`; digits, spaces and punctuation are not letters."""
    letters = [ch for ch in text if ch.isalpha()]
    return sum(is_persian_letter(ch) for ch in letters), len(letters)


def persian_ratio(texts: str | Iterable[str]) -> float:
    """Share of Persian-script letters among all letters (pooled over texts; 0.0 when there are none)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    persian = total = 0
    for t in texts:
        p, n = letter_counts(t)
        persian, total = persian + p, total + n
    return persian / total if total else 0.0


def word_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """The word n-grams of `text` in order (words split on whitespace)."""
    words = text.split()
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def ngram_counts(text: str, n: int = 3) -> tuple[int, int]:
    """(repeated word n-grams, all word n-grams) of `text`: an n-gram seen before counts as repeated."""
    grams = word_ngrams(text, n)
    return len(grams) - len(set(grams)), len(grams)


def repeat_ngram_rate(texts: str | Iterable[str], n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier n-gram of the same text (pooled; 0.0 when none)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    repeated = total = 0
    for t in texts:
        r, g = ngram_counts(t, n)
        repeated, total = repeated + r, total + g
    return repeated / total if total else 0.0


def prompt_echo_rate(pairs: Iterable[tuple[str, str]], n: int = 2) -> float:
    """Share of the answers' word n-grams that also occur in their own prompt, pooled over
    (prompt, answer) pairs; 1.0 when every answer only repeats its question, 0.0 when there are none."""
    copied = total = 0
    for prompt, answer in pairs:
        prompt_grams = set(word_ngrams(prompt, n))
        grams = word_ngrams(answer, n)
        copied += sum(g in prompt_grams for g in grams)
        total += len(grams)
    return copied / total if total else 0.0


def stop_rate(stopped: Sequence[bool]) -> float:
    """Share of answers that ended with the end token before the length limit."""
    return sum(bool(s) for s in stopped) / len(stopped) if stopped else 0.0


def chrf(answers: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (0-100) of `answers` against one reference answer each (sacrebleu's CHRF defaults:
    character 6-grams, beta 2, no word n-grams)."""
    from sacrebleu.metrics import CHRF

    if len(answers) != len(references):
        raise ValueError(f"chrf: {len(answers)} answers for {len(references)} references")
    if not answers:
        return 0.0
    return float(CHRF().corpus_score(list(answers), [list(references)]).score)


def perplexity(loss: float) -> float:
    """exp(mean token cross-entropy); inf when it would overflow."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
