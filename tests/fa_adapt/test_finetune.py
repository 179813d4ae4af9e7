"""Strategies' trainable sets, finetune end to end on a tiny Gemma 3, run folder and load_run back."""

from __future__ import annotations

import json

import pytest

from adapt.errors import UserError


def _prepared(tiny_model_dir, method):
    from fa_adapt.config import resolve_config
    from fa_adapt.training import prepare_model

    cfg = resolve_config(method=method, model=str(tiny_model_dir), quantization="none")
    return prepare_model(cfg)


def test_lora_trains_adapters_and_chatml_rows_only(tiny_model_dir):
    from fa_adapt.params import count_parameters

    model, tok, new_ids, _ = _prepared(tiny_model_dir, "lora")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable), trainable
    # all-linear (the default since the recipe study): every projection of the blocks, not lm_head
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert all(any(f"{proj}.lora_A" in n for n in trainable) for proj in projections)
    assert not any("lm_head.lora" in n for n in trainable)
    # r=16 × (in + out) of each adapted linear layer, plus 2 token rows of width 64
    adapted = [m for n, m in model.named_modules() if n.endswith(projections) and hasattr(m, "base_layer")]
    lora = sum(16 * (m.base_layer.in_features + m.base_layer.out_features) for m in adapted)
    assert len(adapted) == 7 * 2  # two layers in the tiny model
    assert count_parameters(model)["trainable"] == lora + 2 * 64
    assert len(new_ids) == 2


def test_prompt_trains_only_the_soft_prompt(tiny_model_dir):
    from fa_adapt.params import count_parameters

    model, *_ = _prepared(tiny_model_dir, "prompt")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("prompt_encoder" in n for n in trainable), trainable
    assert count_parameters(model)["trainable"] == 20 * 64


def test_freeze_trains_first_and_last_layer_and_chatml_rows(tiny_model_dir):
    model, *_ = _prepared(tiny_model_dir, "freeze")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    layers = {n.split("layers.")[1].split(".")[0] for n in trainable if "layers." in n}
    assert layers == {"0", "1"}  # 2-layer model: first and last
    assert any("trainable_tokens" in n for n in trainable)
    assert not any("trainable_tokens" not in n and "embed_tokens" in n for n in trainable)


def test_count_parameters_uses_logical_size_of_4bit_weights():
    import bitsandbytes as bnb
    import torch

    from fa_adapt.params import count_parameters

    layer = bnb.nn.Linear4bit(64, 32, bias=False, quant_type="nf4")
    layer = layer.to("cpu") if False else layer
    layer.weight = bnb.nn.Params4bit(torch.randn(32, 64), requires_grad=False, quant_type="nf4")._quantize(
        "cpu"
    )
    assert layer.weight.numel() == 32 * 64 // 2  # packed storage
    assert count_parameters(layer)["total"] == 32 * 64


@pytest.mark.parametrize("method", ["lora", "prompt", "freeze"])
def test_finetune_writes_run_and_loads_back(tiny_model_dir, chat_jsonl, tmp_path, method):
    import torch

    from fa_adapt import finetune, load_run

    out = finetune(
        method=method,
        model=str(tiny_model_dir),
        data=str(chat_jsonl),
        output=str(tmp_path / method),
        quantization="none",
        max_steps=12,
        batch_size=4,
        lr=1e-2 if method != "prompt" else 5e-2,
        logging_steps=2,
        eval_steps=4,
    )
    for name in ("config.json", "metrics.json", "loss.png", "summary.md", "tokenizer.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 12
    assert metrics["final_eval_loss"] < metrics["initial_eval_loss"]
    assert metrics["train_rows"] == 20 and metrics["validation_rows"] == 4
    run = load_run(out)
    assert run.method == method and run.config["method"] == method and not run.model.training
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    # trained ChatML rows are merged for inference (unmerged, each forward copies the embedding)
    token_layers = [m for m in run.model.modules() if isinstance(m, TrainableTokensLayer)]
    assert all(m.merged for m in token_layers) and (token_layers or method != "lora")
    ids = torch.tensor(
        [run.tokenizer("<|im_start|>user\nسلام<|im_end|>\n")["input_ids"]], device=run.model.device
    )
    with torch.no_grad():
        logits = run.model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    # the loaded model reproduces the trained validation loss (weights really came back)
    from fa_adapt import data as D

    convs, _ = D.load_conversations(chat_jsonl)
    rows = D.tokenize_conversations(run.tokenizer, convs, 160, D.DataStats())
    _, val = D.split_train_validation(rows, 42)
    from fa_adapt.collator import ChatCollator

    batch = {k: v.to(run.model.device) for k, v in ChatCollator(run.tokenizer.pad_token_id)(val).items()}
    with torch.no_grad():
        loss = run.model(**batch).loss.item()
    assert loss == pytest.approx(metrics["final_eval_loss"], rel=0.02)


def test_load_run_rejects_non_run(tmp_path):
    from fa_adapt import load_run

    with pytest.raises(UserError, match="not a run folder"):
        load_run(tmp_path)


def test_default_run_is_one_epoch_and_flags_override_it():
    from fa_adapt.config import resolve_config

    for method in ("lora", "prompt", "freeze"):
        cfg = resolve_config(method=method, output="x")
        assert (cfg.epochs, cfg.max_steps) == (1.0, None)
    assert resolve_config(epochs=5, output="x").epochs == 5
    cfg = resolve_config(max_steps=7, output="x")
    assert (cfg.epochs, cfg.max_steps) == (None, 7)  # training then stops after 7 steps


def test_bad_flags():
    from fa_adapt.config import resolve_config

    with pytest.raises(UserError, match="choose one of: freeze, lora, prompt"):
        resolve_config(method="adapterx")
    with pytest.raises(UserError, match="--batch-size must be greater than 0"):
        resolve_config(batch_size=0)
    with pytest.raises(UserError, match="--epochs"):
        resolve_config(epochs=-1)


def test_freeze_resumed_from_a_checkpoint_reaches_the_same_state(tiny_model_dir, chat_jsonl, tmp_path):
    """A checkpoint holds the freeze strategy's trained layers (not adapter weights) and no copy of
    the resized embedding; resuming from step 4 ends where the uninterrupted run ended."""
    import shutil

    from safetensors import safe_open

    from fa_adapt import finetune

    common = dict(
        method="freeze",
        model=str(tiny_model_dir),
        data=str(chat_jsonl),
        quantization="none",
        max_steps=8,
        batch_size=4,
        lr=1e-2,
        logging_steps=1,
        eval_steps=4,
        save_steps=4,
    )
    reference = finetune(output=str(tmp_path / "reference"), **common)
    checkpoint = reference / "checkpoints" / "checkpoint-4"
    with safe_open(str(checkpoint / "adapter_model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if k.endswith(("embed_tokens.weight", "lm_head.weight"))]
    # what a run stopped after step 4 leaves behind
    stopped = tmp_path / "stopped" / "checkpoints"
    stopped.mkdir(parents=True)
    shutil.copytree(checkpoint, stopped / "checkpoint-4")
    shutil.copy(reference / "checkpoints" / "resume.json", stopped / "resume.json")
    resumed = finetune(output=str(tmp_path / "stopped"), resume=True, **common)
    a = json.loads((reference / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    assert b["steps"] == 8
    after = [round(loss, 4) for step, loss in a["train_loss"] if step > 4]
    assert [round(loss, 4) for step, loss in b["train_loss"] if step > 4] == after
    assert b["final_eval_loss"] == pytest.approx(a["final_eval_loss"], abs=1e-4)
