"""Generation: stop token, no-repeat rule, KV cache on/off equality, batched == single (tiny models)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from adapt.errors import UserError
from fa_adapt.generation import as_messages, generate, generate_batch, prompt_text, stop_token_ids

_spec = importlib.util.spec_from_file_location("fa_tiny_chat", Path(__file__).with_name("tiny_chat.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

PROMPTS = ["سلام", "یک داستان کوتاه بگو لطفا دوست من", "ملکه الیزابت کیست؟"]


@pytest.fixture(scope="module")
def base():
    return tiny.model_and_tokenizer()


@pytest.fixture(scope="module")
def variants(base):
    model, tok = base
    return {
        "base": model,
        "lora": tiny.lora(model),
        "prompt": tiny.prompt_tuned(model),
        "freeze": tiny.freeze_like(model),
    }


def _reference(model, tok, prompt, max_new_tokens, use_cache):
    """The model's own `generate` on one unpadded prompt (PEFT's path for prompt tuning)."""
    text = prompt_text(tok, [{"role": "user", "content": prompt}])
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    assert ids["input_ids"][0, 0] == tok.bos_token_id
    out = model.generate(
        **ids,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=use_cache,
        eos_token_id=stop_token_ids(tok),
        pad_token_id=tok.pad_token_id,
    )
    return out[0, ids["input_ids"].shape[1] :].tolist()


def _ids(tok, answer):
    return tok(answer.answer, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", ["base", "lora", "prompt", "freeze"])
def test_cache_on_equals_cache_off_and_batch_equals_single(base, variants, name):
    _, tok = base
    model = variants[name]
    batched = generate_batch(model, PROMPTS, tokenizer=tok, max_new_tokens=8, no_repeat_ngram=0, batch_size=4)
    for prompt, answer in zip(PROMPTS, batched, strict=True):
        # our (cached, left-padded batch) tokens == the model's cache-free greedy tokens for the prompt alone
        assert answer.token_ids == _reference(model, tok, prompt, 8, use_cache=False)
    single = generate(model, PROMPTS[0], tokenizer=tok, max_new_tokens=8, no_repeat_ngram=0)
    assert single.token_ids == batched[0].token_ids


def test_variants_really_differ(base, variants):
    _, tok = base
    answers = {
        n: tuple(generate(m, PROMPTS[1], tokenizer=tok, max_new_tokens=10).token_ids)
        for n, m in variants.items()
    }
    assert len(set(answers.values())) == 4, answers


def test_prompt_tuned_uses_the_virtual_tokens_with_cache(base, variants):
    model, tok = base
    pt = variants["prompt"]
    differs = 0
    for prompt in PROMPTS:
        got = generate(pt, prompt, tokenizer=tok, max_new_tokens=10, no_repeat_ngram=0)
        ref_peft = _reference(pt, tok, prompt, 10, use_cache=False)
        assert got.token_ids == ref_peft
        differs += ref_peft != _reference(model, tok, prompt, 10, use_cache=True)
    assert differs  # the virtual tokens change the answer, so the equality above is not trivial


def _repeated_trigrams(ids):
    grams = [tuple(ids[i : i + 3]) for i in range(len(ids) - 2)]
    return len(grams) - len(set(grams))


def test_no_repeat_ngram_blocks_repeated_trigrams_in_the_answer(base, variants):
    _, tok = base
    for model in variants.values():
        free = generate(model, PROMPTS[1], tokenizer=tok, max_new_tokens=16, no_repeat_ngram=0)
        ruled = generate(model, PROMPTS[1], tokenizer=tok, max_new_tokens=16)
        # the random models repeat themselves without the rule
        assert _repeated_trigrams(free.token_ids) > 0
        assert _repeated_trigrams(ruled.token_ids) == 0


CONV = [{"role": "user", "content": "سلام"}, {"role": "assistant", "content": "سلام، حال شما چطور است؟"}]


@pytest.fixture(scope="module")
def learned():
    model, tok = tiny.model_and_tokenizer(scale=1.0)
    losses = tiny.overfit(model, tok, CONV)
    return model, tok, losses


def test_no_repeat_rule_lets_the_answer_quote_the_prompt(learned):
    model, tok, _ = learned
    conv = CONV
    # the answer starts with the prompt's word: transformers' prompt-wide rule would ban it
    assert generate(model, "سلام", tokenizer=tok, max_new_tokens=40).answer == conv[-1]["content"]


def test_stops_at_im_end_after_learning_an_answer(learned):
    model, tok, losses = learned
    conv = CONV
    assert losses[-1] < losses[0] / 10
    ans = generate(model, "سلام", tokenizer=tok, max_new_tokens=40)
    assert ans.answer == "سلام، حال شما چطور است؟"
    assert ans.stopped and ans.tokens < 40
    assert ans.tokens == len(tok(conv[-1]["content"], add_special_tokens=False)["input_ids"]) + 1


def test_limit_reached_is_not_stopped(base):
    model, tok = base
    ans = generate(model, PROMPTS[2], tokenizer=tok, max_new_tokens=5)
    assert not ans.stopped and ans.tokens == 5


def test_streaming_pieces_join_to_the_answer(base, variants):
    _, tok = base
    for model in (variants["lora"], variants["prompt"]):
        pieces: list[str] = []
        ans = generate(model, PROMPTS[2], tokenizer=tok, max_new_tokens=15, stream=pieces.append)
        assert len(pieces) > 1
        assert "".join(pieces).strip() == ans.answer


def test_sampling_is_seeded_and_differs_from_greedy(base):
    model, tok = base
    torch.manual_seed(0)
    a = generate(model, PROMPTS[1], tokenizer=tok, max_new_tokens=12, temperature=1.5, top_p=0.95)
    torch.manual_seed(0)
    b = generate(model, PROMPTS[1], tokenizer=tok, max_new_tokens=12, temperature=1.5, top_p=0.95)
    greedy = generate(model, PROMPTS[1], tokenizer=tok, max_new_tokens=12)
    assert a.token_ids == b.token_ids and a.token_ids != greedy.token_ids


def test_system_message_and_bad_input(base):
    model, tok = base
    assert as_messages("hi", system="be kind")[0] == {"role": "system", "content": "be kind"}
    with_system = generate(model, "hi", tokenizer=tok, system="be kind", max_new_tokens=6)
    assert with_system.answer != generate(model, "hi", tokenizer=tok, max_new_tokens=6).answer
    with pytest.raises(UserError, match="--top-p"):
        generate(model, "hi", tokenizer=tok, top_p=0)
    with pytest.raises(UserError, match="--max-new-tokens"):
        generate(model, "hi", tokenizer=tok, max_new_tokens=0)
    with pytest.raises(UserError, match="tokenizer"):
        generate(model, "hi")
    with pytest.raises(UserError, match="user message"):
        generate(model, [{"role": "assistant", "content": "x"}], tokenizer=tok)
