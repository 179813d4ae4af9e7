"""`finetune`: load, add ChatML tokens, apply a method, train with HF Trainer, write one run folder.

HF Trainer runs the loop, so `torchrun`/`accelerate launch` give data-parallel training unchanged;
only the main process writes the run folder. Checkpoints go to `<output>/checkpoints`; `resume`
continues from the newest one to the same final state. Ctrl-C or SIGTERM saves a checkpoint first
and ends the run with `adapt.stopping.Stopped` (exit 130 / 143 from the CLI).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapt.errors import UserError
from adapt.runio import read_json
from adapt.stopping import Stopped
from fa_adapt import data as chat_data
from fa_adapt.chatml import with_system
from fa_adapt.config import FinetuneConfig, resolve_config
from fa_adapt.methods import Method


def prepare_model(cfg: FinetuneConfig) -> tuple[Any, Any, list[int], Method]:
    """Load tokenizer + model for `cfg`, add ChatML tokens and apply the method."""
    from fa_adapt.chatml import add_chatml_tokens
    from fa_adapt.device import upcast_trainable
    from fa_adapt.loading import load_model, load_tokenizer, resolve_model_path

    method = cfg.build_method()
    path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(path)
    model = load_model(
        path,
        quantization=cfg.quantization,
        keep_unquantized=method.keep_unquantized,
        device=cfg.device,
        dtype=cfg.dtype_choice(),
    )
    new_ids = add_chatml_tokens(tokenizer, model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model = method.apply(model, new_ids)
    upcast_trainable(model)  # half-precision frozen weights (GPU, bf16 CPU), fp32 trained ones
    if method.row_only_forward:
        from fa_adapt.token_rows import use_row_only_forward

        use_row_only_forward(model)  # same loss and gradients, without two embedding copies per step
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    return model, tokenizer, new_ids, method


RESUME_FILE = "resume.json"  # in <output>/checkpoints: the resolved settings and the step-0 loss


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
    from adapt.stopping import resume_hint as shell_line

    return shell_line(["adapt", "finetune", "--output", str(out), "--resume"])


def _training_arguments(cfg: FinetuneConfig, out: Path, total_steps: int, fresh: bool) -> Any:
    """Trainer's arguments for `cfg`: evaluate at step 0 (fresh runs), halfway and at the end; keep
    the checkpoint with the best validation loss and end on its weights."""
    from transformers import TrainingArguments

    from fa_adapt.device import resolve_device

    device = resolve_device(cfg.device)
    half = cfg.dtype_choice().name
    # halfway, rounded up: Trainer also evaluates at the last step, so with total // 2 an odd total
    # (53 on the packaged data) was evaluated twice in a row (steps 52 and 53)
    eval_steps = cfg.eval_steps or max(1, math.ceil(total_steps / 2))
    warmup = cfg.warmup_ratio if cfg.warmup_ratio is not None else min(10, max(0, total_steps // 10))
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size * 2,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        num_train_epochs=float(cfg.epochs or 1),
        max_steps=cfg.max_steps or -1,
        optim=cfg.optim,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=warmup,  # a float below 1 is a share of the steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        neftune_noise_alpha=cfg.neftune_noise_alpha,
        logging_steps=cfg.logging_steps,
        # the step-0 evaluation runs inside train(), after accelerate has wrapped the model: a
        # trainer.evaluate() before train() marks the bare model as prepared, and under torchrun
        # it is then never wrapped in DDP (each rank trained its own copy)
        eval_on_start=fresh,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps or eval_steps,
        save_total_limit=2,  # the newest and the best (Trainer never deletes the best)
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        seed=cfg.seed,
        data_seed=cfg.seed,
        train_sampling_strategy="group_by_length",  # seeded per epoch: see fa_adapt.trainer
        report_to="none",  # TensorBoard is added by _build_trainer, writing into the run folder
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        use_cpu=device.type == "cpu",
        # mixed precision (autocast from the fp32 trained tensors) on GPUs and bf16-capable CPUs;
        # fp16 (GPUs before Ampere) with a loss scaler
        bf16=half == "bf16",
        fp16=half == "fp16",
    )


def finetune(
    config: FinetuneConfig | None = None, *, callbacks: list[Any] | None = None, **settings: Any
) -> Path:
    """Fine-tune a causal LM on chat data and write a run folder; returns its path.

    Give a `FinetuneConfig`, or its settings as keywords named as `adapt finetune`'s flags (`None`
    values take the defaults; see `fa_adapt.config`). `callbacks` are extra
    `transformers.TrainerCallback`s. Raises `UserError` for bad settings or data,
    `GradientCheckError` (a `UserError`) when a group of trainable tensors gets no gradient at the
    first step (`fa_adapt.grad_check`), and `adapt.stopping.Stopped` when a signal stopped the run
    after its checkpoint was saved.
    """
    from adapt.run_folder import claim_output, run_lock
    from fa_adapt.runs import is_run_folder, latest_checkpoint, run_entries

    if config is not None:
        settings = {**config.saved(), "resume": config.resume, "overwrite": config.overwrite, **settings}
    base_eval = None
    if settings.get("resume"):
        settings, base_eval = _resume_settings(settings)
    cfg = resolve_config(**settings)
    out = Path(cfg.output)
    resume_from = None
    if cfg.resume:
        resume_from = latest_checkpoint(out / "checkpoints")
        if resume_from is None:
            raise UserError(f"--resume: no complete checkpoint in {out / 'checkpoints'}")
    data = chat_data.load_conversations(cfg.data, strict=cfg.strict, limit=cfg.max_train_rows)
    data = (with_system(data[0], cfg.system_prompt), data[1])
    main = int(os.environ.get("RANK", "0")) == 0  # the other ranks use the main rank's folder
    if resume_from is None and main:
        claim_output(out, "fa_adapt", is_run_folder, run_entries(), overwrite=cfg.overwrite)
    with run_lock(out, enabled=main):
        trainer, parts = _build_trainer(cfg, data, out, fresh=resume_from is None, callbacks=callbacks or [])
        wall = _run_trainer(trainer, parts, out, resume_from)
        _finish(trainer, parts, cfg, out, base_eval, wall)
    return out


@dataclass
class _Parts:
    """What a run holds beside its Trainer: the loaded parts and its own callbacks."""

    tokenizer: Any
    new_ids: list[int]
    method: Method
    stats: Any
    start: Any  # RecordStart: the step-0 evaluation, for --resume
    progress: Any  # RichProgress
    interrupt: Any  # InterruptCheckpoint
    guard: Any  # GradientGuard


def _build_trainer(
    cfg: FinetuneConfig, data: tuple[list[Any], Any], out: Path, fresh: bool, callbacks: list[Any]
) -> tuple[Any, _Parts]:
    """The Trainer of this run and the parts `_finish` needs."""
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback

    from fa_adapt.callbacks import InterruptCheckpoint, RecordStart, RichProgress
    from fa_adapt.collator import ChatCollator
    from fa_adapt.grad_check import GradientGuard
    from fa_adapt.trainer import ChatTrainer

    set_seed(cfg.seed)
    conversations, stats = data
    model, tokenizer, new_ids, method = prepare_model(cfg)
    examples = chat_data.tokenize_conversations(tokenizer, conversations, cfg.max_length, stats)
    train_rows, val_rows = chat_data.split_train_validation(examples, cfg.seed)
    steps_per_epoch = math.ceil(len(train_rows) / (cfg.batch_size * cfg.grad_accum))
    total_steps = int(cfg.max_steps or math.ceil(steps_per_epoch * cfg.epochs))
    start = RecordStart(out / "checkpoints" / RESUME_FILE, cfg.saved())
    parts = _Parts(
        tokenizer, new_ids, method, stats, start, RichProgress(), InterruptCheckpoint(), GradientGuard()
    )
    trainer = ChatTrainer(
        model=model,
        args=_training_arguments(cfg, out, total_steps, fresh=fresh),
        train_dataset=train_rows,
        eval_dataset=val_rows,
        data_collator=ChatCollator(tokenizer.pad_token_id),
        callbacks=[parts.guard, parts.start, parts.progress, parts.interrupt, *callbacks],
    )
    trainer.remove_callback(PrinterCallback)  # it prints log dicts on stdout; RichProgress shows them
    for extra in _optional_callbacks(cfg, out):
        trainer.add_callback(extra)
    return trainer, parts


def _optional_callbacks(cfg: FinetuneConfig, out: Path) -> list[Any]:
    """Early stopping and the TensorBoard log (in `out/tb`), where asked for."""
    extra: list[Any] = []
    if cfg.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        extra.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    if cfg.report_to == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "--report-to tensorboard: install it with pip install 'adapt[tensorboard]'"
            ) from None
        from transformers.integrations import TensorBoardCallback

        if int(os.environ.get("RANK", "0")) == 0:
            extra.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(out / "tb"))))
    return extra


def _run_trainer(trainer: Any, parts: _Parts, out: Path, resume_from: str | None) -> float:
    """Train (from `resume_from` when given); the wall time, or `Stopped` when a signal ended it."""
    interrupt = parts.interrupt
    started = time.time()
    with interrupt.installed(), parts.progress.closed_on_exit():
        trainer.train(resume_from_checkpoint=resume_from)
    if interrupt.stopped and trainer.state.global_step < trainer.state.max_steps:
        raise Stopped(
            f"stopped at step {trainer.state.global_step} of {trainer.state.max_steps}; "
            f"checkpoint saved in {out / 'checkpoints'}. Resume with: {resume_hint(out)}",
            signum=interrupt.signum,
        )
    return time.time() - started


def _best_checkpoint(trainer: Any) -> int | None:
    """The step of the checkpoint Trainer ended on (best validation loss), if one was kept."""
    best = trainer.state.best_model_checkpoint
    return int(Path(best).name.split("-")[-1]) if best else None


def _finish(
    trainer: Any, parts: _Parts, cfg: FinetuneConfig, out: Path, base_eval: float | None, wall: float
) -> None:
    """The final evaluation, then the run folder (main process only)."""
    from fa_adapt.runs import run_metrics, write_run

    if parts.start.initial_eval_loss is not None:
        base_eval = parts.start.initial_eval_loss
    best = _best_checkpoint(trainer)
    last_eval = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h), None)
    if best is not None:  # Trainer ended on the best checkpoint's weights
        final_eval = trainer.state.best_metric
    elif last_eval is not None and last_eval.get("step") == trainer.state.global_step:
        # an evaluation costs as much as several training steps on a CPU: reuse the one Trainer
        # just ran at the final step rather than repeating it
        final_eval = last_eval["eval_loss"]
    else:
        final_eval = trainer.evaluate()["eval_loss"]
    if not trainer.is_world_process_zero():
        return
    evals = {
        "initial_eval_loss": base_eval,
        "final_eval_loss": final_eval,
        "gradient_check": parts.guard.report(),
        "best_step": best if best is not None else trainer.state.global_step,
        "stopped_early": trainer.state.global_step < trainer.state.max_steps,
    }
    metrics = run_metrics(trainer, cfg, parts.stats, evals, wall)
    saved = dict(cfg.saved(), chatml_token_ids=parts.new_ids)
    write_run(out, trainer.model, parts.tokenizer, parts.method, saved, metrics)
