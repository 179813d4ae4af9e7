"""The row-only forward for the trained ChatML rows gives PEFT's loss and gradients exactly."""

from __future__ import annotations

import pytest


def _model(tiny_model_dir, method):
    import torch

    from fa_adapt.chatml import add_chatml_tokens
    from fa_adapt.loading import load_model, load_tokenizer
    from fa_adapt.methods import get_method

    tok = load_tokenizer(str(tiny_model_dir))
    # fp32: the two forwards must agree to float rounding; bf16 (auto on CPUs with avx512_bf16)
    # rounds the two computation orders apart by more
    model = load_model(str(tiny_model_dir), quantization="none", dtype="fp32")
    new_ids = add_chatml_tokens(tok, model)
    torch.manual_seed(1)
    model = get_method(method).apply(model, new_ids)
    with torch.no_grad():  # move the rows and LoRA B off their initial values so every path matters
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model, tok


@pytest.mark.parametrize("method", ["lora", "freeze"])
def test_row_only_forward_matches_peft(tiny_model_dir, chat_jsonl, method):
    import torch

    from fa_adapt import data as D
    from fa_adapt.collator import ChatCollator
    from fa_adapt.labeled_loss import labeled_loss
    from fa_adapt.token_rows import use_row_only_forward

    results = []
    for row_only in (False, True):
        model, tok = _model(tiny_model_dir, method)
        if row_only:
            assert use_row_only_forward(model) == 2  # input embedding and tied output projection
        model.eval()  # no dropout: the two passes must see the same function
        convs, _ = D.load_conversations(chat_jsonl)
        rows = D.tokenize_conversations(tok, convs, 160, D.DataStats())[:4]
        loss, _ = labeled_loss(
            model, {k: v.to(model.device) for k, v in ChatCollator(tok.pad_token_id)(rows).items()}
        )
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.item(), grads))
    (loss_peft, grads_peft), (loss_rows, grads_rows) = results
    assert loss_rows == pytest.approx(loss_peft, rel=1e-6)
    assert grads_rows.keys() == grads_peft.keys()
    assert any("trainable_tokens_delta" in n for n in grads_rows)
    for name in grads_peft:
        assert torch.allclose(grads_rows[name], grads_peft[name], atol=1e-6, rtol=1e-4), name
        assert grads_peft[name].abs().sum() > 0, name
