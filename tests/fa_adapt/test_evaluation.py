"""Evaluation: assistant-token loss (checked against the model's own loss), answer metrics, keys."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from adapt.errors import UserError
from fa_adapt.data import encode_conversation
from fa_adapt.evaluation import (
    GENERATION_KEYS,
    answer_metrics,
    changes,
    default_heldout_path,
    evaluate,
    heldout_loss,
    heldout_questions,
    is_improvement,
    read_prompts,
    reference_score,
)
from fa_adapt.generation import Answer

_spec = importlib.util.spec_from_file_location("fa_tiny_chat", Path(__file__).with_name("tiny_chat.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

CONVS = [
    [
        {"role": "system", "content": "دستیار باش"},
        {"role": "user", "content": "سلام"},
        {"role": "assistant", "content": "سلام، حال شما چطور است؟"},
    ],
    [
        {"role": "user", "content": "ملکه الیزابت کیست؟"},
        {"role": "assistant", "content": "او ملکه بریتانیا بود."},
    ],
    [{"role": "user", "content": "یک شعر فارسی بنویسید"}, {"role": "assistant", "content": "باران می‌بارد"}],
]


@pytest.fixture(scope="module")
def base():
    return tiny.model_and_tokenizer(scale=1.0)


def test_heldout_loss_matches_the_models_own_loss_on_assistant_tokens(base):
    model, tok = base
    loss, n = heldout_loss(model, CONVS, tokenizer=tok, batch_size=2)  # padded batches
    total = count = 0
    for conv in CONVS:
        ids, labels = encode_conversation(tok, conv)
        k = sum(lab != -100 for lab in labels[1:])
        with torch.no_grad():
            total += model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item() * k
        count += k
    assert n == count
    assert loss == pytest.approx(total / count, rel=1e-4)


def test_prompt_tuned_loss_ignores_the_virtual_positions(base):
    model, tok = base
    pt = tiny.prompt_tuned(model)
    loss, n = heldout_loss(pt, CONVS[:1], tokenizer=tok)
    ids, labels = encode_conversation(tok, CONVS[0])
    with torch.no_grad():
        ref = pt(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
    assert loss == pytest.approx(ref, rel=1e-4)


def test_learning_lowers_heldout_loss_and_evaluate_reports_all_keys():
    model, tok = tiny.model_and_tokenizer(scale=1.0)
    before, _ = heldout_loss(model, CONVS[:1], tokenizer=tok)
    tiny.overfit(model, tok, CONVS[0][1:], steps=30)
    result, answers = evaluate(model, CONVS[:1], prompts=["سلام", "hi"], tokenizer=tok, max_new_tokens=20)
    assert result["loss"] < before
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert set(result) == {"loss", "perplexity", *GENERATION_KEYS}
    assert len(answers) == 2 and answers[0].answer == "سلام، حال شما چطور است؟"
    assert result["tokens_per_s"] > 0
    only_loss, none = evaluate(model, CONVS, tokenizer=tok)
    assert set(only_loss) == {"loss", "perplexity"} and none == []


def test_chrf_rises_to_100_when_the_model_learns_the_reference_answer():
    model, tok = tiny.model_and_tokenizer(scale=1.0)
    conversation = CONVS[0][1:]  # the user turn and its reference answer
    before, _, _ = reference_score(model, [conversation], tokenizer=tok, max_new_tokens=20)
    tiny.overfit(model, tok, conversation, steps=30)
    after, answers, references = reference_score(model, [conversation], tokenizer=tok, max_new_tokens=20)
    assert references == ["سلام، حال شما چطور است؟"] and answers[0].answer == references[0]
    assert after == pytest.approx(100.0) and before < 50


def test_heldout_questions_are_the_turns_before_the_last_answer():
    multi = [
        {"role": "user", "content": "الف"},
        {"role": "assistant", "content": "ب"},
        {"role": "user", "content": "پ"},
        {"role": "assistant", "content": "ت"},
    ]
    no_answer = [{"role": "user", "content": "فقط سوال"}]
    questions, references = heldout_questions([CONVS[0], multi, no_answer])
    assert references == [CONVS[0][2]["content"], "ت"]
    assert questions == [CONVS[0][:2], multi[:3]]


def test_chrf_on_hand_made_answers():
    from fa_adapt.metrics import chrf

    same = ["باران می‌بارد و هوا سرد است."]
    assert chrf(same, same) == pytest.approx(100.0)
    assert chrf(["xyz qqq"], same) < 5 < chrf(["باران می‌بارد."], same) < 100
    assert chrf([], []) == 0.0
    with pytest.raises(ValueError, match="2 answers for 1 references"):
        chrf(["a", "b"], ["a"])


def test_answer_metrics_on_hand_made_answers():
    answers = [
        Answer("p", "سلام دوست من", True, 4, 0.5),
        Answer("p", "hello hello hello hello", False, 10, 1.5),
    ]
    m = answer_metrics(answers)
    assert m["persian_ratio"] == pytest.approx(10 / 30)
    assert m["repeat_3gram"] == pytest.approx(1 / 3)  # 1 of 3 trigrams (all in the English answer)
    assert m["stop_rate"] == 0.5
    assert m["prompt_echo"] == 0.0  # nothing copied from the prompt "p"
    assert m["answer_tokens_mean"] == 7
    assert m["tokens_per_s"] == 7


def test_changes_and_direction():
    d = changes({"loss": 1.0, "stop_rate": 0.9}, {"loss": 2.0, "stop_rate": 0.5, "x": 1})
    assert d == pytest.approx({"loss": -1.0, "stop_rate": 0.4})
    assert is_improvement("loss", -1.0) and is_improvement("stop_rate", 0.4)
    assert is_improvement("repeat_3gram", 0.1) is False
    assert is_improvement("answer_tokens_mean", 3) is None


def test_prompt_file_reading(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("سلام\n\n  یک شعر بگو \n", encoding="utf-8")
    assert read_prompts(p) == ["سلام", "یک شعر بگو"]
    (tmp_path / "e.txt").write_text("\n")
    with pytest.raises(UserError, match="no prompt"):
        read_prompts(tmp_path / "e.txt")
    with pytest.raises(UserError, match="not found"):
        read_prompts(tmp_path / "missing.txt")
    assert default_heldout_path().is_file()
