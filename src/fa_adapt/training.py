"""`finetune`: load, add ChatML tokens, apply a strategy, train with HF Trainer, write one run folder.

HF Trainer runs the loop, so `torchrun`/`accelerate launch` give data-parallel training unchanged;
only the main process writes the run folder. Checkpoints go to `<output>/checkpoints`; `resume`
continues from the newest one to the same final state. Ctrl-C saves a checkpoint first.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import time
from pathlib import Path
from typing import Any

from adapt.errors import UserError
from adapt.runio import as_number, check_choice, check_positive, read_json
from fa_adapt import data as chat_data
from fa_adapt import strategies
from fa_adapt.loading import QUANTIZATIONS

TRAIN_DEFAULTS: dict[str, Any] = {
    "method": "lora",
    "model": None,
    "data": None,
    "output": None,
    "epochs": None,
    "max_steps": None,
    "lr": None,
    "batch_size": 4,
    "grad_accum": 1,
    "max_length": 160,
    "seed": 42,
    "quantization": "nf4",
    "gradient_checkpointing": False,
    "max_train_rows": None,
    "logging_steps": 5,
    "eval_steps": None,
    "save_steps": None,
    "target_modules": None,
    "num_virtual_tokens": None,
    "strict": False,
    "resume": False,
    "overwrite": False,
}
# settings that must be whole numbers / numbers (YAML may hand over strings, lists or NaN)
_INTEGERS = (
    "max_steps",
    "batch_size",
    "grad_accum",
    "max_length",
    "seed",
    "max_train_rows",
    "logging_steps",
    "eval_steps",
    "save_steps",
    "num_virtual_tokens",
)
_NUMBERS = ("epochs", "lr")
# With neither --epochs nor --max-steps a run makes one pass over the data: on the packaged sample
# that is what a default LoRA run needs to answer in Persian and stop (docs/fa_adapt.md), and it
# takes minutes on a 2-core CPU. The source's epoch counts (strategies' docstring) are a flag away.
DEFAULT_EPOCHS = 1.0


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def resolve_config(**overrides: Any) -> dict[str, Any]:
    """Defaults ← strategy defaults ← the given values (None means "not given")."""
    cfg = dict(TRAIN_DEFAULTS)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(overrides) - set(TRAIN_DEFAULTS)
    if unknown:
        raise UserError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    for key in ("method", "model", "data", "output", "quantization"):
        if cfg[key] is not None and not isinstance(cfg[key], str):
            raise UserError(f"{_flag(key)} must be text, got {type(cfg[key]).__name__} {cfg[key]!r}")
    for key in ("gradient_checkpointing", "strict", "resume", "overwrite"):
        if not isinstance(cfg[key], bool):
            raise UserError(f"{_flag(key)} must be true or false, got {cfg[key]!r}")
    targets = cfg["target_modules"]
    if targets is not None and not (
        isinstance(targets, str) or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))
    ):
        raise UserError(f"--target-modules must be comma-separated module names, got {targets!r}")
    check_choice("--method", cfg["method"], list(strategies.STRATEGIES))
    check_choice("--quantization", cfg["quantization"], QUANTIZATIONS)
    strat = strategies.STRATEGIES[cfg["method"]]()
    if cfg["lr"] is None:
        cfg["lr"] = strat.lr
    if cfg["epochs"] is None and cfg["max_steps"] is None:
        cfg["epochs"] = DEFAULT_EPOCHS
    for key in _INTEGERS + _NUMBERS:
        cfg[key] = as_number(_flag(key), cfg[key], integer=key in _INTEGERS)
    for key in ("lr", "epochs", *(k for k in _INTEGERS if k != "seed")):
        check_positive(_flag(key), cfg[key])
    check_positive("--seed", cfg["seed"], allow_zero=True)
    if cfg["target_modules"] and isinstance(cfg["target_modules"], str):
        cfg["target_modules"] = [m.strip() for m in cfg["target_modules"].split(",") if m.strip()]
    if cfg["output"] is None:
        cfg["output"] = f"runs/fa-{cfg['method']}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg


def strategy_config(cfg: dict[str, Any]) -> Any:
    """The strategy dataclass for `cfg`, with the CLI-level overrides applied."""
    strat = strategies.STRATEGIES[cfg["method"]]()
    if cfg["method"] == "lora" and cfg.get("target_modules"):
        strat.target_modules = list(cfg["target_modules"])
    if cfg["method"] == "prompt" and cfg.get("num_virtual_tokens"):
        strat.num_virtual_tokens = int(cfg["num_virtual_tokens"])
    strat.lr = cfg["lr"]
    return strat


def prepare_model(cfg: dict[str, Any]) -> tuple[Any, Any, list[int], Any]:
    """Load tokenizer + model for `cfg`, add ChatML tokens and apply the strategy."""
    from fa_adapt.chatml import add_chatml_tokens
    from fa_adapt.loading import load_model, load_tokenizer, resolve_model_path

    path = resolve_model_path(cfg["model"])
    tokenizer = load_tokenizer(path)
    quant = cfg["quantization"]
    skip = None
    if cfg["method"] == "freeze" and quant == "nf4":
        from transformers import AutoConfig

        skip = strategies.decoder_layer_names(AutoConfig.from_pretrained(path))
    model = load_model(path, quantization=quant, skip_modules=skip)
    new_ids = add_chatml_tokens(tokenizer, model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    strat = strategy_config(cfg)
    if cfg["method"] == "prompt":
        model = strategies.apply_prompt(model, strat, new_ids)
    else:
        model = strategies.APPLY[cfg["method"]](model, strat, new_ids)
        from fa_adapt.token_rows import use_row_only_forward

        use_row_only_forward(model)  # same loss and gradients, without two embedding copies per step
    if cfg["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    return model, tokenizer, new_ids, strat


RESUME_FILE = "resume.json"  # in <output>/checkpoints: the resolved settings and the step-0 loss


def _as_saved(cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg` as a run folder keeps it: the one-off switches of this invocation turned off."""
    return dict(cfg, resume=False, overwrite=False)


def _resume_settings(settings: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
    """The stopped run's settings (flags given now override them) and its step-0 validation loss."""
    if settings.get("output") is None:
        raise UserError("--resume: give --output, the run folder to continue")
    state_file = Path(settings["output"]) / "checkpoints" / RESUME_FILE
    state = read_json(state_file) if state_file.is_file() else {"settings": {}}  # else: flags alone
    merged = dict(state.get("settings", {}))
    merged.update({k: v for k, v in settings.items() if v is not None})
    return merged, state.get("initial_eval_loss")


def resume_hint(out: Path) -> str:
    """The command that continues the run in `out`."""
    return f"adapt finetune --output {shlex.quote(str(out))} --resume"


def _training_arguments(cfg: dict[str, Any], out: Path, total_steps: int, fresh: bool) -> Any:
    """Trainer's arguments for `cfg`: evaluate at step 0 (fresh runs), halfway and at the end."""
    import torch
    from transformers import TrainingArguments

    max_steps = int(cfg["max_steps"]) if cfg["max_steps"] else -1
    # halfway, rounded up: Trainer also evaluates at the last step, so with total // 2 an odd total
    # (53 on the packaged data) was evaluated twice in a row (steps 52 and 53)
    eval_steps = cfg["eval_steps"] or max(1, math.ceil(total_steps / 2))
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=cfg["batch_size"],
        per_device_eval_batch_size=cfg["batch_size"] * 2,
        gradient_accumulation_steps=cfg["grad_accum"],
        learning_rate=cfg["lr"],
        num_train_epochs=float(cfg["epochs"] or 1),
        max_steps=max_steps,
        lr_scheduler_type="linear",
        warmup_steps=min(10, max(0, total_steps // 10)),
        logging_steps=cfg["logging_steps"],
        # the step-0 evaluation runs inside train(), after accelerate has wrapped the model: a
        # trainer.evaluate() before train() marks the bare model as prepared, and under torchrun
        # it is then never wrapped in DDP (each rank trained its own copy)
        eval_on_start=fresh,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=cfg["save_steps"] or eval_steps,
        save_total_limit=2,
        seed=cfg["seed"],
        data_seed=cfg["seed"],
        train_sampling_strategy="group_by_length",  # seeded per epoch: see fa_adapt.trainer
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    )


def finetune(*, callbacks: list[Any] | None = None, **settings: Any) -> Path:
    """Fine-tune a causal LM on chat data and write a run folder; returns its path.

    Settings are those of `adapt finetune` (see `TRAIN_DEFAULTS`); `None` values take the
    strategy's defaults. `callbacks` are extra `transformers.TrainerCallback`s. Raises `UserError`
    for bad settings or data, and `GradientCheckError` (a `UserError`) when a group of trainable
    tensors gets no gradient at the first step (`fa_adapt.grad_check`).
    """
    from adapt.run_folder import claim_output, run_lock
    from fa_adapt.runs import RUN_ENTRIES, is_run_folder, latest_checkpoint

    base_eval = None
    if settings.get("resume"):
        settings, base_eval = _resume_settings(settings)
    cfg = resolve_config(**settings)
    out = Path(cfg["output"])
    resume_from = None
    if cfg["resume"]:
        resume_from = latest_checkpoint(out / "checkpoints")
        if resume_from is None:
            raise UserError(f"--resume: no complete checkpoint in {out / 'checkpoints'}")
    data = chat_data.load_conversations(cfg["data"], strict=cfg["strict"], limit=cfg["max_train_rows"])
    main = int(os.environ.get("RANK", "0")) == 0  # the other ranks use the main rank's folder
    if resume_from is None and main:
        claim_output(out, "fa_adapt", is_run_folder, RUN_ENTRIES, overwrite=cfg["overwrite"])
    with run_lock(out, enabled=main):
        return _train(cfg, data, out, resume_from, base_eval, callbacks or [])


def _train(
    cfg: dict[str, Any],
    data: tuple[list[Any], Any],
    out: Path,
    resume_from: str | None,
    base_eval: float | None,
    callbacks: list[Any],
) -> Path:
    """`finetune` once the settings are checked and the folder is claimed."""
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback

    from fa_adapt.callbacks import InterruptCheckpoint, Interrupted, RecordStart, RichProgress
    from fa_adapt.collator import ChatCollator
    from fa_adapt.grad_check import GradientGuard
    from fa_adapt.trainer import ChatTrainer

    ckpt_dir = out / "checkpoints"
    set_seed(cfg["seed"])
    conversations, stats = data
    model, tokenizer, new_ids, strat = prepare_model(cfg)
    examples = chat_data.tokenize_conversations(tokenizer, conversations, cfg["max_length"], stats)
    train_rows, val_rows = chat_data.split_train_validation(examples, cfg["seed"])
    steps_per_epoch = math.ceil(len(train_rows) / (cfg["batch_size"] * cfg["grad_accum"]))
    total_steps = int(cfg["max_steps"] or math.ceil(steps_per_epoch * cfg["epochs"]))
    progress, interrupt, guard = RichProgress(), InterruptCheckpoint(), GradientGuard()
    start = RecordStart(ckpt_dir / RESUME_FILE, _as_saved(cfg))
    trainer = ChatTrainer(
        model=model,
        args=_training_arguments(cfg, out, total_steps, fresh=resume_from is None),
        train_dataset=train_rows,
        eval_dataset=val_rows,
        data_collator=ChatCollator(tokenizer.pad_token_id),
        callbacks=[guard, start, progress, interrupt, *callbacks],
    )
    trainer.remove_callback(PrinterCallback)  # it prints log dicts on stdout; RichProgress shows them
    started = time.time()
    with interrupt.installed(), progress.closed_on_exit():
        trainer.train(resume_from_checkpoint=resume_from)
    if interrupt.stopped and trainer.state.global_step < trainer.state.max_steps:
        raise Interrupted(
            f"stopped at step {trainer.state.global_step} of {trainer.state.max_steps}; "
            f"checkpoint saved in {ckpt_dir}. Resume with: {resume_hint(out)}",
            signum=interrupt.signum,
        )
    wall = time.time() - started
    base_eval = start.initial_eval_loss if start.initial_eval_loss is not None else base_eval
    # an evaluation costs as much as several training steps on a CPU: reuse the one Trainer just
    # ran at the final step rather than repeating it
    last_eval = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h), None)
    if last_eval is not None and last_eval.get("step") == trainer.state.global_step:
        final_eval = last_eval["eval_loss"]
    else:
        final_eval = trainer.evaluate()["eval_loss"]
    if trainer.is_world_process_zero():
        evals = {
            "initial_eval_loss": base_eval,
            "final_eval_loss": final_eval,
            "gradient_check": guard.report(),
        }
        _write_outputs(out, trainer, cfg, strat, new_ids, tokenizer, stats, evals, wall)
    return out


def _write_outputs(
    out: Path,
    trainer: Any,
    cfg: dict[str, Any],
    strat: Any,
    new_ids: list[int],
    tokenizer: Any,
    stats: Any,
    evals: dict[str, Any],
    wall: float,
) -> None:
    """Metrics of the finished training, then the run folder (`fa_adapt.runs.write_run`)."""
    from fa_adapt.runs import write_run

    model, state = trainer.model, trainer.state
    counts = strategies.count_parameters(model)
    n_tokens = sum(len(r["input_ids"]) for r in trainer.train_dataset)
    eval_curve = [(h["step"], h["eval_loss"]) for h in state.log_history if "eval_loss" in h]
    base_eval = evals["initial_eval_loss"]
    if base_eval is not None and not any(step == 0 for step, _ in eval_curve):
        eval_curve.insert(0, (0, base_eval))  # a run resumed from a checkpoint of an older version
    metrics = {
        "method": cfg["method"],
        "steps": state.global_step,
        "epochs": state.epoch,
        **evals,
        "train_loss": [(h["step"], h["loss"]) for h in state.log_history if "loss" in h],
        "eval_loss": eval_curve,
        "trainable_params": counts["trainable"],
        "total_params": counts["total"],
        "trainable_percent": counts["percent"],
        "train_rows": len(trainer.train_dataset),
        "validation_rows": len(trainer.eval_dataset),
        "data": dataclasses.asdict(stats),
        "tokens_per_second": n_tokens * (state.epoch or 0) / max(wall, 1e-9),
        "wall_time_s": wall,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }
    cfg_out = dict(_as_saved(cfg), strategy=dataclasses.asdict(strat), chatml_token_ids=new_ids)
    write_run(out, model, tokenizer, cfg_out, metrics)
