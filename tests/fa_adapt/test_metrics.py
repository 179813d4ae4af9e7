"""Answer metrics on hand-made strings."""

from __future__ import annotations

import math

import pytest

from fa_adapt.metrics import (
    is_persian_letter,
    letter_counts,
    ngram_counts,
    perplexity,
    persian_ratio,
    prompt_echo_rate,
    repeat_ngram_rate,
    stop_rate,
)


def test_persian_letters():
    assert all(is_persian_letter(c) for c in "سلامپچژگک")
    assert not any(
        is_persian_letter(c) for c in "abcZ ۱۲۳،؟."
    )  # Persian digits and punctuation are not letters


def test_persian_ratio_counts_letters_only():
    assert persian_ratio("سلام") == 1.0
    assert persian_ratio("hello") == 0.0
    assert letter_counts("سلام hi ۱۲۳!") == (4, 6)
    assert persian_ratio("سلام hi ۱۲۳!") == pytest.approx(4 / 6)
    # pooled over answers: 4 Persian of 4 + 4 Persian of 10 letters
    assert persian_ratio(["سلام", "سلام abcdef"]) == pytest.approx(8 / 14)
    assert persian_ratio(["", "123"]) == 0.0


def test_repeat_3gram_rate():
    assert ngram_counts("a b c d") == (0, 2)
    assert repeat_ngram_rate("a b c d") == 0.0
    # "من خوبم من خوبم من خوبم": 4 trigrams, 2 distinct -> 2 repeated
    assert ngram_counts("من خوبم من خوبم من خوبم") == (2, 4)
    assert repeat_ngram_rate("من خوبم من خوبم من خوبم") == 0.5
    assert repeat_ngram_rate(["a a a a", "x y"]) == 0.5  # 1 of 2 trigrams; "x y" has none
    assert repeat_ngram_rate("") == 0.0


def test_prompt_echo_rate():
    question = "ملکه الیزابت کیست؟"
    assert prompt_echo_rate([(question, question)]) == 1.0  # the answer is the question
    # "ملکه الیزابت" is the question's; "الیزابت ملکه" and "ملکه انگلستان" are not: 1 of 3
    assert prompt_echo_rate([(question, "ملکه الیزابت ملکه انگلستان")]) == pytest.approx(1 / 3)
    assert prompt_echo_rate([(question, "او ملکه بود"), (question, "سلام")]) == 0.0  # "سلام": no 2-gram
    assert prompt_echo_rate([(question, question), ("a b", "c d e")]) == pytest.approx(2 / 4)  # pooled
    assert prompt_echo_rate([]) == 0.0


def test_stop_rate_and_perplexity():
    assert stop_rate([True, False, True, True]) == 0.75
    assert stop_rate([]) == 0.0
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(20)) == pytest.approx(20)
    assert perplexity(1e6) == math.inf
