"""Caption metrics on hand-made references, checked against values worked out by hand."""

import math

import pytest

from capkit import metrics
from capkit.metrics import JAVA_MISSING, compute_metrics, ptb_tokenize, simple_tokenize

needs_java = pytest.mark.skipif(
    not metrics.java_available(), reason="Java not installed (PTB tokenizer / METEOR)"
)


def test_bleu_by_hand():
    # "a dog runs" vs {"a dog", "the cat runs"}: every word matches (p1 = 3/3), one bigram of two
    # does ("a dog", p2 = 1/2), the closest reference length is 3 so there is no brevity penalty.
    m = compute_metrics(["a dog runs"], [["A dog.", "The cat runs."]], meteor=False)
    for prefix in ("", "coco_"):
        assert m[f"{prefix}bleu1"] == pytest.approx(100.0, abs=1e-4)
        assert m[f"{prefix}bleu2"] == pytest.approx(100 * math.sqrt(0.5), abs=1e-4)


def test_bleu_brevity_penalty_by_hand():
    # 2 words against a 4-word reference: BP = exp(1 - 4/2) = e^-1, all unigrams match.
    m = compute_metrics(["a dog"], [["a dog runs fast"]], meteor=False)
    assert m["bleu1"] == pytest.approx(100 * math.exp(-1), abs=1e-3)
    assert m["coco_bleu1"] == pytest.approx(100 * math.exp(-1), abs=1e-3)


def test_rouge_l_by_hand():
    # Best precision 2/3 (LCS "a dog" with ref 1), best recall 1; F with beta 1.2.
    m = compute_metrics(["a dog runs"], [["a dog", "the cat runs"]], meteor=False)
    p, r, beta2 = 2 / 3, 1.0, 1.2**2
    assert m["rouge_l"] == pytest.approx(100 * (1 + beta2) * p * r / (r + beta2 * p), abs=1e-6)


def test_cider_d_identical_and_disjoint():
    refs = [["a dog runs on grass"], ["two kids play soccer"]]
    # Every n-gram is unique to its image, so each image scores 10 (CIDEr-D's x10 scale) per n.
    assert compute_metrics(["a dog runs on grass", "two kids play soccer"], refs, meteor=False)[
        "cider_d"
    ] == pytest.approx(1000.0)
    assert compute_metrics(["three cats", "one car"], refs, meteor=False)["cider_d"] == pytest.approx(0.0)


def test_perfect_prediction_scores_100_on_bleu_and_rouge():
    refs = [["a dog runs on the grass", "a brown dog"], ["two children play in a park", "kids playing"]]
    m = compute_metrics(["a dog runs on the grass", "two children play in a park"], refs, meteor=False)
    for key in ("bleu4", "coco_bleu4", "rouge_l"):
        assert m[key] == pytest.approx(100.0, abs=1e-3), key
    assert m["meteor"] is None and "METEOR not computed (switched off)" in m["notes"]


def test_empty_prediction_is_scored_not_crashed():
    m = compute_metrics(["", "a man rides a bike"], [["a dog"], ["a man rides a bike"]], meteor=False)
    assert 0 < m["coco_bleu1"] < 100 and math.isfinite(m["cider_d"])


@needs_java
def test_ptb_tokenizer_drops_punctuation_and_keeps_line_alignment():
    out = ptb_tokenize(["A dog's running, on the grass.", "", "Hello there!"])
    assert out == ["a dog 's running on the grass", "", "hello there"]
    assert simple_tokenize(["A dog's running, on the grass."]) == [out[0]]


def test_without_java_the_other_metrics_are_still_computed(monkeypatch):
    monkeypatch.setattr(metrics, "java_available", lambda: False)
    m = compute_metrics(["a dog runs"], [["A dog.", "The cat runs."]])
    assert m["meteor"] is None and JAVA_MISSING in m["notes"]
    assert m["bleu1"] == pytest.approx(100.0, abs=1e-4) and m["rouge_l"] > 0


@pytest.mark.slow
@needs_java
def test_meteor_of_identical_captions_is_near_100():
    # One METEOR run (its Java start-up loads paraphrase tables: ~20 s on a busy 2-core machine).
    refs = [["a dog runs on the grass"], ["two children play in a park"]]
    same = compute_metrics(["a dog runs on the grass", "two children play in a park"], refs)
    assert 95 < same["meteor"] <= 100
