"""Train a caption decoder on cached encoder features, with accelerate (one or many processes).

Cross-entropy epochs first, then, with `--scst-epochs`, self-critical ones (`capkit.scst`) from
the best cross-entropy weights; `--init-from RUN` skips the first phase and starts the second
from a finished run. Features are computed once (see `capkit.features`), so an epoch only runs
the decoder. Batches are drawn from a permutation seeded by (seed, epoch) and dropout is reseeded
per epoch, so a run resumed from its end-of-epoch checkpoint reaches exactly the state an
uninterrupted run reaches.
Only the main process writes files. SIGINT and SIGTERM stop a run at once (`adapt.stopping`):
the last checkpoint is kept and `Stopped` says how to resume.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adapt import console
from adapt.errors import UserError
from adapt.run_folder import claim_output, default_run_folder, run_lock
from adapt.stopping import Stopped, raising_signals, signum_of
from capkit import runs, scst
from capkit.checkpoints import TrainState, kept_stage, read_checkpoint, save_checkpoint
from capkit.data import ImageRecord, load_dataset
from capkit.decoders import Decoder, build_decoder
from capkit.decoding import decode
from capkit.examples import Examples, build_examples, evaluate_loss
from capkit.train_config import TrainConfig, resume_command
from capkit.vocab import Vocab

EVAL_BATCH = 256  # validation batches: no gradients, so larger than training's


@dataclass
class _Data:
    """A run's vocabulary and examples, on top of the features of its images."""

    vocab: Vocab
    feature_dim: int
    grid_cells: int  # the encoder's feature grid, flattened (49 for 7×7)
    train_set: Examples
    val_set: Examples
    train_records: list[ImageRecord]
    val_records: list[ImageRecord]
    row_of: dict[Path, int]  # an image's row in the feature tensors (unreadable ones left out)
    counts: dict[str, Any]  # for metrics.json


@dataclass
class _Run:
    """Everything the epochs of a run share."""

    cfg: TrainConfig
    accelerator: Any
    data: _Data
    decoder: Decoder
    model: torch.nn.Module  # the decoder's loss, as accelerate prepared it (DDP-wrapped on many ranks)
    optimizer: torch.optim.Optimizer
    state: TrainState
    best_weights: dict[str, torch.Tensor]
    log: Callable[[str], Any]
    # a checkpoint taken during self-critical training: its state and optimizer (`capkit.scst`)
    resumed_scst: dict[str, Any] | None = None
    scst_state: scst.ScstState | None = None  # the self-critical phase's state once it has run

    @property
    def main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    @property
    def out(self) -> Path:
        return Path(str(self.cfg.output))


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> Path:
    """Run (or resume) training; returns the run folder. `overwrite` replaces a previous capkit run
    in `cfg.output` (never other files: such a folder is refused).

    SIGINT or SIGTERM stops it: the checkpoint of the last finished epoch is kept and `Stopped`
    (exit code 128 + the signal) says so, with the command that resumes the run.
    """
    cfg.validate()
    with raising_signals():
        accelerator = _accelerator()
        checkpoint = _open_folder(cfg, accelerator, resume, overwrite)
        try:
            run = _set_up(cfg, accelerator, checkpoint)
            with run_lock(run.out, enabled=run.main):  # refuses a second run into the same folder
                while not run.state.finished and run.state.epoch < cfg.epochs:
                    _train_epoch(run)
                scst.run_phase(run)
                if run.main:
                    _finish(run)
        except KeyboardInterrupt as interrupt:  # StopSignal (SIGINT, SIGTERM) or a plain Ctrl-C
            # the other processes stop with the same code; the main one says what was kept
            message = _stop_message(cfg) if accelerator.is_main_process else "stopped"
            raise Stopped(message, signum_of(interrupt)) from None
    accelerator.wait_for_everyone()
    return Path(str(cfg.output))


def _accelerator() -> Any:
    from accelerate import Accelerator

    # on a machine without a GPU, accelerate treats torchrun's processes as one process each (no
    # gradient sync, every rank training its own copy on all data) unless told it runs on the CPU
    cpu_ranks = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(cpu=cpu_ranks)


def _log_for(accelerator: Any) -> Callable[[str], Any]:
    """Progress notes on stderr, from the main process only."""
    return console.stderr_console().print if accelerator.is_main_process else (lambda *a, **k: None)


def _open_folder(cfg: TrainConfig, accelerator: Any, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """Settle `cfg.output` on every process; with `resume` return its checkpoint, else claim the
    folder for a new run (a one-line `UserError` when it is not the run's to take)."""
    from accelerate.utils import broadcast_object_list

    names = [cfg.output or default_run_folder(f"caption-{cfg.decoder}")]
    broadcast_object_list(names)  # every process agrees on the folder the main one writes
    cfg.output = str(names[0])
    if resume:
        return read_checkpoint(cfg, _log_for(accelerator))
    start = scst.start_checkpoint(cfg) if cfg.init_from else None  # before --overwrite clears anything
    if accelerator.is_main_process:
        claim_output(Path(cfg.output), "capkit", runs.is_run_folder, runs.RUN_ENTRIES, overwrite=overwrite)
    return start


def _set_up(cfg: TrainConfig, accelerator: Any, checkpoint: dict[str, Any] | None) -> _Run:
    """Data, features, decoder and optimizer, restored from `checkpoint` when resuming."""
    log = _log_for(accelerator)
    data = _load_data(cfg, accelerator, checkpoint)
    torch.manual_seed(cfg.seed)
    _fit_grid(cfg, data.grid_cells)
    decoder = build_decoder(
        cfg.decoder, len(data.vocab), data.feature_dim, pad_id=data.vocab.pad_id, **cfg.decoder_config
    )
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    resumed_scst = None
    if checkpoint:
        decoder.load_state_dict(checkpoint["model"])
        if checkpoint.get("scst") is not None:  # the optimizer is the self-critical phase's
            resumed_scst = {"state": checkpoint["scst"], "optimizer": checkpoint["optimizer"]}
        elif "optimizer" in checkpoint:  # not in --init-from's start
            optimizer.load_state_dict(checkpoint["optimizer"])
            for group in optimizer.param_groups:  # a changed --lr applies (read_checkpoint's note says so)
                group["lr"] = cfg.lr
        state = TrainState.from_checkpoint(checkpoint, cfg.patience)
        best_weights = checkpoint["best_model"]
        start = f"starting from {checkpoint['init_from']}" if "init_from" in checkpoint else "resuming"
        log(f"{start} {cfg.output} after epoch {state.epoch}")
    else:
        state = TrainState()
        best_weights = {k: v.clone() for k, v in decoder.state_dict().items()}
    model, optimizer = accelerator.prepare(_TrainingLoss(decoder), optimizer)
    run = _Run(cfg, accelerator, data, decoder, model, optimizer, state, best_weights, log, resumed_scst)
    if run.main:
        run.out.mkdir(parents=True, exist_ok=True)
        counts = data.counts
        log(
            f"{cfg.decoder} decoder · {counts['vocab_size']} words · {counts['train_examples']} training captions · "
            f"{counts['val_examples']} validation captions · {counts['corrupt_images']} unreadable images skipped"
        )
    if not checkpoint:  # the untrained model's loss: the baseline the learning curve starts from
        state.initial_val_loss = round(
            evaluate_loss(decoder, data.val_set, EVAL_BATCH, accelerator.device), 5
        )
    elif not math.isfinite(state.best_val):  # --init-from a run without metrics.json (the shipped default)
        state.best_val = round(evaluate_loss(decoder, data.val_set, EVAL_BATCH, accelerator.device), 5)
    return run


def _fit_grid(cfg: TrainConfig, grid_cells: int) -> None:
    """A decoder that learns one position per grid cell (a `grid_cells` argument: the transformer)
    is built for this encoder's grid (49 cells for Lite0's 7×7, 81 for Lite2's 9×9); the size joins
    `cfg.decoder_config`, which the run saves, so it loads back at that size."""
    import inspect

    from capkit.decoders import find_decoder

    cls = find_decoder(cfg.decoder)
    takes_grid = cls is not None and "grid_cells" in inspect.signature(cls).parameters
    if takes_grid and "grid_cells" not in cfg.decoder_config:
        cfg.decoder_config = {**cfg.decoder_config, "grid_cells": grid_cells}


def _load_data(cfg: TrainConfig, accelerator: Any, checkpoint: dict[str, Any] | None) -> _Data:
    """The dataset's train and val splits as examples over cached features; the vocabulary is
    built from the training captions, or the checkpoint's when resuming."""
    from capkit.encoders import load_encoder
    from capkit.features import extract_features

    dataset = load_dataset(cfg.data, seed=cfg.seed)
    train_records, val_records = dataset.split("train"), dataset.split("val")
    if not train_records or not val_records:
        raise UserError(
            f"{cfg.data}: need training and validation images, found {len(train_records)} and {len(val_records)}"
        )
    vocab = (
        Vocab(checkpoint["vocab"])
        if checkpoint
        else Vocab.build((c for r in train_records for c in r.captions), cfg.min_count)
    )
    encoder = load_encoder(cfg.encoder)
    images = [r.image for r in train_records + val_records]
    with accelerator.main_process_first():  # the main process fills the cache, the others read it
        feats = extract_features(
            encoder, images, cfg.cache_dir, grid_dtype=torch.float16, progress=accelerator.is_main_process
        )
    failed = set(feats["failed"])
    row_of = {p: i for i, p in enumerate(images) if i not in failed}
    tensors = (feats["pooled"], feats["grid"])
    train_set, truncated = build_examples(train_records, row_of, vocab, cfg.max_length, *tensors)
    val_set, _ = build_examples(val_records, row_of, vocab, cfg.max_length, *tensors)
    counts = {
        **dataset.stats(),
        "corrupt_images": len(failed),
        "truncated_captions": truncated,
        "train_examples": len(train_set),
        "val_examples": len(val_set),
        "vocab_size": len(vocab),
    }
    grid_cells = int(feats["grid"].shape[1])
    return _Data(
        vocab, encoder.feature_dim, grid_cells, train_set, val_set, train_records, val_records, row_of, counts
    )


def _train_epoch(run: _Run) -> None:
    """The next epoch: its steps, the validation loss, early stopping's count and the checkpoint."""
    cfg, state, accelerator = run.cfg, run.state, run.accelerator
    epoch = state.epoch + 1
    started = time.perf_counter()
    train_loss, steps = _run_steps(run, epoch)
    val_loss = evaluate_loss(run.decoder, run.data.val_set, EVAL_BATCH, accelerator.device)
    if not math.isfinite(train_loss):
        raise UserError(f"training diverged at epoch {epoch} (loss {train_loss}); lower --lr (now {cfg.lr})")
    row = {
        "epoch": epoch,
        "train_loss": round(train_loss, 5),
        "val_loss": round(val_loss, 5),
        "steps": steps,
        "seconds": round(time.perf_counter() - started, 2),
    }
    improved = state.record(row, val_loss, cfg.patience, cfg.epochs)
    if improved:
        run.best_weights = {k: v.detach().cpu().clone() for k, v in run.decoder.state_dict().items()}
    run.log(
        f"epoch {epoch}: train loss {train_loss:.4f} · validation loss {val_loss:.4f}"
        + (" (best)" if improved else "")
    )
    if run.main:
        save_checkpoint(
            run.out / runs.CHECKPOINT,
            cfg,
            run.data.vocab,
            run.decoder,
            run.optimizer,
            run.best_weights,
            state,
        )
    accelerator.wait_for_everyone()


def _run_steps(run: _Run, epoch: int) -> tuple[float, int]:
    """The optimizer steps of `epoch`; returns the mean training loss over all processes and the
    number of steps. Batches are global: each of `world` processes takes every world-th caption."""
    cfg, train_set, accelerator = run.cfg, run.data.train_set, run.accelerator
    world, rank = accelerator.num_processes, accelerator.process_index
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    order = torch.randperm(len(train_set), generator=generator).tolist()
    torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout: same masks after a resume
    global_batch = cfg.batch_size * world
    steps = math.ceil(len(order) / global_batch)
    run.model.train()
    losses = []
    with console.progress(f"epoch {epoch}/{cfg.epochs}", steps, enabled=run.main) as advance:
        for s in range(steps):
            chunk = order[s * global_batch : (s + 1) * global_batch]
            mine = chunk[rank::world] or chunk[:1]  # every process must step, even on a short tail
            pooled, grid, captions = train_set.batch(mine, accelerator.device)
            loss = run.model(pooled, grid, captions)
            if world > 1:
                loss = loss * _share_of_tokens(captions, train_set.pad_id, bool(chunk[rank::world]))
            run.optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
            run.optimizer.step()
            losses.append(float(loss.detach()))
            advance(1)
    mean = torch.tensor(sum(losses) / len(losses), device=accelerator.device)
    return float(accelerator.reduce(mean, "mean")), steps


def _share_of_tokens(captions: torch.Tensor, pad_id: int, has_rows: bool) -> torch.Tensor:
    """This process's weight for its mean loss, so that DDP's gradient average equals the gradient of
    the token mean over the whole global batch (what one process with that batch computes).

    Each process's loss is a mean over its own target tokens, and processes hold different numbers
    of tokens; weighting by `world * mine / all` makes the average token-weighted. A process that
    only repeats a row to keep in step on a short last batch gets weight 0.
    """
    import torch.distributed as dist

    mine = (captions[:, 1:] != pad_id).sum().float() * float(has_rows)
    everyone = mine.clone()
    dist.all_reduce(everyone)
    return mine * dist.get_world_size() / everyone.clamp(min=1)


class _TrainingLoss(torch.nn.Module):
    """The decoder's training loss as a module's forward, so DDP's wrapper all-reduces its gradients."""

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, *inputs: torch.Tensor, objective: Callable[..., Any] | None = None) -> Any:
        """The cross-entropy loss of (pooled, grid, captions), or `objective(decoder, *inputs)`
        (self-critical training's `capkit.scst.Objective`)."""
        if objective is not None:
            return objective(self.decoder, *inputs)
        return self.decoder.loss(*inputs)["loss"]


def _finish(run: _Run) -> None:
    """Main process: the best weights back in the decoder, then the run folder with its samples."""
    run.decoder.load_state_dict(run.best_weights)
    run.decoder.eval()
    samples = _samples(run.decoder, run.data, run.cfg.max_length, run.accelerator.device)
    data = run.data
    scst_metrics = scst.scst_metrics(run.scst_state, run.cfg) if run.scst_state is not None else None
    runs.save_run(
        run.out,
        run.cfg,
        data.vocab,
        run.decoder,
        run.state,
        data.counts,
        samples,
        data.feature_dim,
        scst_metrics,
    )


def _samples(decoder: Decoder, data: _Data, max_length: int, device: torch.device) -> list[dict[str, Any]]:
    """Greedy captions of five validation images spread over the split, with their references."""
    val_rows = sorted(set(data.val_set.rows))
    record_of = {data.row_of[r.image]: r for r in data.val_records if r.image in data.row_of}
    rows = val_rows[:: max(1, len(val_rows) // 5)][:5]
    pooled = data.val_set.pooled[rows].to(device)
    grid = data.val_set.grid[rows].to(device, torch.float32)
    ids = decode(decoder, pooled, grid, data.vocab, strategy="greedy", max_len=max_length + 1)
    return [
        {
            "image": str(record_of[r].image),
            "generated": data.vocab.decode(c),
            "references": record_of[r].captions,
        }
        for r, c in zip(rows, ids, strict=True)
    ]


def _stop_message(cfg: TrainConfig) -> str:
    """What a stopped run kept, and the exact command that continues it."""
    path = Path(str(cfg.output)) / runs.CHECKPOINT
    if not path.is_file():
        return (
            f"stopped before the first epoch ended; nothing to resume in {cfg.output} (run the command again)"
        )
    return (
        f"stopped; the checkpoint after {kept_stage(path)} is kept in {path}. Resume with:\n"
        f"  {resume_command(cfg)}"
    )
