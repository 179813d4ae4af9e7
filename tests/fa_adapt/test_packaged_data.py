"""The packaged Persian data: enough of it, written correctly, and a held-out set that shares no
question with training (not even a near-duplicate once spelling variants are normalised)."""

from __future__ import annotations

import re
import unicodedata
from itertools import combinations

import pytest

from fa_adapt.data import load_conversations
from fa_adapt.evaluation import default_heldout_path, heldout_questions

ARABIC_YEH_KAF = re.compile("[\u064a\u0649\u0643]")  # ي ى ك: Persian writes ی and ک
# character 3-gram Jaccard similarity at which two questions count as the same question: spelling,
# spacing and punctuation variants score 1.0 after `normalise`; the closest different questions in
# the data are one template with another subject word (معنی «آرزو» … / معنی «کوشا» …: 0.70)
NEAR = 0.8


def normalise(text: str) -> str:
    """Spelling-insensitive form: NFKC, Arabic yeh/kaf as Persian, Persian and Arabic digits as
    Latin, no ZWNJ, diacritics or punctuation, single spaces."""
    text = unicodedata.normalize("NFKC", text)
    text = text.translate(str.maketrans("يىك", "ییک"))
    text = text.translate(str.maketrans("۰۱۲۳۴۵۶۷۸۹٠١٢٣٤٥٦٧٨٩", "01234567890123456789"))
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith(("M", "P", "C")))
    return " ".join(text.lower().split())


def trigrams(text: str) -> set[str]:
    t = f" {normalise(text)} "
    return {t[i : i + 3] for i in range(len(t) - 2)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _questions(conversations):
    """Each conversation's user turns, joined: what a near-duplicate would repeat."""
    return [" / ".join(m["content"] for m in c if m["role"] == "user") for c in conversations]


@pytest.fixture(scope="module")
def packaged():
    train, train_stats = load_conversations(None, strict=True)
    heldout, heldout_stats = load_conversations(default_heldout_path(), strict=True)
    return train, heldout


def test_there_is_enough_data_and_every_row_reads_strictly(packaged):
    train, heldout = packaged
    assert len(train) >= 1000 and len(heldout) >= 100
    # every held-out conversation has a question to answer and a reference answer for chrF
    assert len(heldout_questions(heldout)[0]) == len(heldout)


def test_no_held_out_question_is_a_training_question(packaged):
    train, heldout = packaged
    train_grams = [trigrams(q) for q in _questions(train)]
    close = []
    for question in _questions(heldout):
        grams = trigrams(question)
        best = max(jaccard(grams, other) for other in train_grams)
        if best >= NEAR:
            close.append((round(best, 2), question))
    assert not close, f"held-out questions too close to training ones: {close[:5]}"


def test_no_question_is_asked_twice(packaged):
    for conversations in packaged:
        seen: dict[str, str] = {}
        for q in _questions(conversations):
            key = normalise(q)
            assert key not in seen, f"asked twice: {q!r}"
            seen[key] = q


def test_persian_orthography(packaged):
    for conversations in packaged:
        for conversation in conversations:
            for message in conversation:
                assert not ARABIC_YEH_KAF.search(message["content"]), message["content"]
    text = " ".join(m["content"] for c in packaged[0] for m in c)
    assert text.count("\u200c") > len(packaged[0])  # ZWNJ is used (می‌, ها, ترین …)


def test_the_near_duplicate_check_sees_spelling_variants():
    a = "بزرگ‌ترین کشور جهان کدام است؟"
    b = "بزرگترين كشور جهان كدام است"  # no ZWNJ, Arabic yeh and kaf, no question mark
    assert normalise(a).replace(" ", "") == normalise(b).replace(" ", "")
    assert jaccard(trigrams(a), trigrams(b)) >= NEAR
    assert jaccard(trigrams(a), trigrams("یک شعر درباره‌ی باران بنویس")) < NEAR
    pairs = list(combinations([a, b, "سلام"], 2))
    assert sum(jaccard(trigrams(x), trigrams(y)) >= NEAR for x, y in pairs) == 1
