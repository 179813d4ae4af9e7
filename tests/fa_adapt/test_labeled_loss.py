"""labeled_loss: the same loss and gradients as the model's own, for plain, LoRA, prompt-tuned and Gemma 2 models."""

from __future__ import annotations

import pytest

from fa_adapt.data import IGNORE_INDEX


def _batch(vocab: int):
    import torch

    torch.manual_seed(1)
    ids = torch.randint(3, vocab, (3, 12))
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX  # the prompt
    labels[1, 9:] = IGNORE_INDEX  # a shorter row: right padding
    mask[1, 9:] = 0
    labels[2, :] = IGNORE_INDEX  # a row without any label
    labels[0, 8] = IGNORE_INDEX  # a hole inside the answer
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _check_same(model, batch) -> None:
    import torch

    from fa_adapt.labeled_loss import labeled_loss

    model.train()
    torch.manual_seed(0)
    reference = model(**batch).loss
    reference.backward()
    expected = _grads(model)
    model.zero_grad()
    torch.manual_seed(0)
    loss, outputs = labeled_loss(model, batch)
    loss.backward()
    got = _grads(model)
    model.zero_grad()
    n_labeled = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert outputs.logits.shape[:2] == (1, n_labeled)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    assert expected and expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
    # num_items_in_batch (Trainer's count over an accumulated batch) replaces the own count
    scaled, _ = labeled_loss(model, batch, num_items_in_batch=2 * n_labeled)
    torch.testing.assert_close(scaled, reference / 2, rtol=1e-5, atol=1e-6)


def _tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="float32")


def test_plain_model(tiny_model_dir) -> None:
    model = _tiny(tiny_model_dir)
    _check_same(model, _batch(model.config.vocab_size))


@pytest.mark.parametrize("method", ["lora", "prompt", "freeze"])
def test_strategies(tiny_model_dir, method) -> None:
    from fa_adapt.methods import get_method

    model = _tiny(tiny_model_dir)
    vocab = model.config.vocab_size
    # without dropout: its masks would differ between the two forwards
    chosen = get_method(method, {"lora_dropout": 0.0} if method == "lora" else None)
    model = chosen.apply(model, [vocab - 2, vocab - 1])
    _check_same(model, _batch(vocab))


def test_gemma2_softcapping() -> None:
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        final_logit_softcapping=3.0,  # small, so capping changes the loss
        attn_implementation="eager",
    )
    _check_same(Gemma2ForCausalLM(config), _batch(300))
