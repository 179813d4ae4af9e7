"""The knobs people expect of a fine-tuning tool: best checkpoint and early stopping, LoRA and
optimizer settings, TensorBoard. Each through the real training on the tiny model."""

from __future__ import annotations

import json

import pytest

# a learning rate far too high for LoRA: the validation loss falls, then climbs
RISING = dict(lr=0.3, max_steps=40, eval_steps=2, early_stopping_patience=2, lora_dropout=0.0)


def _run(tiny_model_dir, chat_jsonl, out, **settings):
    from fa_adapt import finetune

    base = dict(
        method="lora", model=str(tiny_model_dir), data=str(chat_jsonl), output=str(out),
        quantization="none", batch_size=4, logging_steps=2,
    )  # fmt: skip
    return finetune(**{**base, **settings})


def test_a_rising_validation_loss_keeps_the_best_step_and_stops_early(tiny_model_dir, chat_jsonl, tmp_path):
    import torch

    from fa_adapt import load_run

    out = _run(tiny_model_dir, chat_jsonl, tmp_path / "es", **RISING)
    m = json.loads((out / "metrics.json").read_text())
    evals = dict((step, loss) for step, loss in m["eval_loss"] if step > 0)
    best_step = min(evals, key=evals.get)
    assert m["best_step"] == best_step and m["final_eval_loss"] == pytest.approx(evals[best_step])
    assert m["stopped_early"] and m["steps"] < 40  # two evaluations without improvement ended it
    assert max(s for s in evals if s > best_step) == m["steps"] == best_step + 4
    assert all(evals[s] >= evals[best_step] for s in evals)
    assert f"kept weights: step {best_step} of {m['steps']}" in (out / "summary.md").read_text()
    # the run folder holds the best step's weights, not the last step's
    run = load_run(out)
    from fa_adapt import data as D
    from fa_adapt.collator import ChatCollator

    convs, _ = D.load_conversations(chat_jsonl)
    rows = D.tokenize_conversations(run.tokenizer, convs, 160, D.DataStats())
    _, val = D.split_train_validation(rows, 42)
    with torch.no_grad():
        loss = run.model(
            **{k: v.to(run.model.device) for k, v in ChatCollator(run.tokenizer.pad_token_id)(val).items()}
        ).loss.item()
    assert loss == pytest.approx(m["final_eval_loss"], rel=0.02)


def test_a_resumed_run_keeps_the_best_step_so_far(tiny_model_dir, chat_jsonl, tmp_path):
    from fa_adapt import finetune

    out = _run(tiny_model_dir, chat_jsonl, tmp_path / "es", **RISING)
    first = json.loads((out / "metrics.json").read_text())
    # continue two steps past the early stop: the best step of before the resume is still known
    finetune(output=str(out), resume=True, max_steps=first["steps"] + 2)
    second = json.loads((out / "metrics.json").read_text())
    evals = {step: loss for step, loss in second["eval_loss"] if step > 0}
    assert second["steps"] == first["steps"] + 2 and first["steps"] + 2 in evals
    assert second["best_step"] == min(evals, key=evals.get)
    if evals[first["steps"] + 2] >= evals[first["best_step"]]:
        assert second["best_step"] == first["best_step"]  # kept across the resume
        assert second["final_eval_loss"] == pytest.approx(first["final_eval_loss"])


def test_lora_optimizer_and_tensorboard_settings_reach_peft_trainer_and_the_run(
    tiny_model_dir, chat_jsonl, tmp_path
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import TrainerCallback

    seen = {}

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kw):
            seen.update(args=args, model=model, optimizer=optimizer)

    settings = dict(
        target_modules="all-linear", use_dora=True, use_rslora=True, lora_r=4, lora_alpha=8,
        optim="sgd", lr_scheduler="cosine", warmup_ratio=0.25, weight_decay=0.01, max_grad_norm=0.5,
        report_to="tensorboard", max_steps=4, eval_steps=2, lr=1e-2,
    )  # fmt: skip
    out = _run(tiny_model_dir, chat_jsonl, tmp_path / "knobs", callbacks=[Probe()], **settings)
    peft_config = seen["model"].peft_config["default"]
    assert (
        peft_config.use_dora and peft_config.use_rslora and (peft_config.r, peft_config.lora_alpha) == (4, 8)
    )
    targets = {name.rsplit(".", 1)[-1] for name in peft_config.target_modules}  # PEFT spells all-linear out
    assert {"q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"} <= targets
    args = seen["args"]
    assert (args.optim, args.lr_scheduler_type, args.warmup_steps) == ("sgd", "cosine", 0.25)
    assert (args.weight_decay, args.max_grad_norm) == (0.01, 0.5)
    assert type(seen["optimizer"].optimizer).__name__ == "SGD"
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in settings if k != "target_modules"} == {
        k: v for k, v in settings.items() if k != "target_modules"
    }
    assert config["target_modules"] == ["all-linear"]
    # TensorBoard's own reader finds the losses metrics.json holds
    metrics = json.loads((out / "metrics.json").read_text())
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    for tag, key in (("train/loss", "train_loss"), ("eval/loss", "eval_loss")):
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [step for step, _ in metrics[key]], tag
        assert [e.value for e in logged] == pytest.approx([loss for _, loss in metrics[key]], rel=1e-5), tag


def test_prompt_tuning_can_start_from_a_persian_instruction(tiny_model_dir):
    import torch

    from fa_adapt.loading import load_model, load_tokenizer
    from fa_adapt.methods import get_method

    text = "به فارسی و کوتاه پاسخ بده"
    model = load_model(str(tiny_model_dir), quantization="none")
    tuned = get_method("prompt", {"prompt_init_text": text, "num_virtual_tokens": 4}).apply(model, [])
    ids = load_tokenizer(str(tiny_model_dir))(text, add_special_tokens=False)["input_ids"][:4]
    soft = tuned.prompt_encoder["default"].embedding.weight
    with torch.no_grad():  # the text's input embeddings as the model sees them (Gemma scales by sqrt(d))
        words = tuned.get_base_model().get_input_embeddings()(torch.tensor(ids, device=soft.device))
    assert torch.equal(soft.detach(), words)


def test_settings_that_cannot_work_are_refused_naming_the_flag():
    from adapt.errors import UserError
    from fa_adapt.config import resolve_config

    for settings, message in [
        ({"warmup_ratio": 1.5}, "--warmup-ratio must be in [0, 1)"),
        ({"optim": "adamw_magic"}, "--optim: unknown value 'adamw_magic'"),
        ({"eval_steps": 4, "save_steps": 6}, "--save-steps (6) must be a multiple of --eval-steps (4)"),
        ({"method": "prompt", "use_dora": True}, "--use-dora applies to --method lora, not prompt"),
        ({"report_to": "wandb"}, "--report-to: unknown value 'wandb'"),
    ]:
        with pytest.raises(
            UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
        ):
            resolve_config(output="x", **settings)
