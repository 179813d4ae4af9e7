"""Train a caption decoder on cached encoder features, with accelerate (one or many processes).

Features are computed once (see `capkit.features`), so an epoch only runs the decoder. Batches
are drawn from a permutation seeded by (seed, epoch) and dropout is reseeded per epoch, so a run
resumed from its end-of-epoch checkpoint reaches exactly the state an uninterrupted run reaches.
Only the main process writes files.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from adapt.errors import UserError
from adapt.runio import atomic_path, check_choice, check_positive
from capkit.data import load_dataset
from capkit.decoders import DECODERS, Decoder, build_decoder
from capkit.decoding import decode
from capkit.vocab import Vocab

CHECKPOINT = "checkpoint.pt"
# Measured on the 762-image sample: higher rates make the transformer diverge early.
DEFAULT_LR = {"lstm": 2e-3, "attention": 1e-3, "transformer": 5e-4}


@dataclass
class TrainConfig:
    """Everything that defines a training run (written to config.json)."""

    data: str
    decoder: str = "attention"
    encoder: str = "efficientnet_lite0"
    epochs: int = 12
    batch_size: int = 64
    lr: float | None = None  # None: DEFAULT_LR[decoder]
    weight_decay: float = 1e-4
    min_count: int = 3
    max_length: int = 25  # words; longer captions are truncated (counted in metrics)
    patience: int = 3
    grad_clip: float = 5.0
    seed: int = 0
    output: str | None = None
    cache_dir: str | None = None
    decoder_config: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check_choice("--decoder", self.decoder, list(DECODERS))
        check_positive("--epochs", self.epochs)
        check_positive("--batch-size", self.batch_size)
        check_positive("--lr", self.lr)
        check_positive("--max-length", self.max_length)
        check_positive("--patience", self.patience)
        check_positive("--min-count", self.min_count)
        if self.lr is None:
            self.lr = DEFAULT_LR[self.decoder]


def encode_captions(vocab: Vocab, captions: list[str], max_length: int) -> tuple[list[list[int]], int]:
    """[start] + word ids (at most `max_length`) + [end] per caption; also how many were truncated."""
    out, truncated = [], 0
    for caption in captions:
        ids = vocab.encode(caption)
        truncated += len(ids) > max_length
        out.append([vocab.start_id, *ids[:max_length], vocab.end_id])
    return out, truncated


def pad_batch(seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    batch = torch.full((len(seqs), max(map(len, seqs))), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = torch.tensor(s)
    return batch


def greedy_captions(
    decoder: Decoder, pooled: torch.Tensor, grid: torch.Tensor, vocab: Vocab, max_length: int = 25
) -> list[str]:
    """Greedy captions for the validation samples drawn into `samples.png`."""
    ids = decode(decoder, pooled, grid, vocab, strategy="greedy", max_len=max_length + 1)
    return [vocab.decode(caption) for caption in ids]


class _Examples:
    """(image row, caption ids) pairs of one split, on top of the feature tensors."""

    def __init__(
        self,
        rows: list[int],
        captions: list[list[int]],
        pooled: torch.Tensor,
        grid: torch.Tensor,
        pad_id: int,
    ):
        self.rows, self.captions, self.pooled, self.grid, self.pad_id = rows, captions, pooled, grid, pad_id

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = torch.tensor([self.rows[i] for i in idx])
        captions = pad_batch([self.captions[i] for i in idx], self.pad_id)
        return self.pooled[rows].to(device), self.grid[rows].to(device, torch.float32), captions.to(device)


def _examples(records, row_of: dict, vocab: Vocab, cfg: TrainConfig, pooled, grid) -> tuple[_Examples, int]:
    rows, caps, truncated = [], [], 0
    for r in records:
        if r.image not in row_of:
            continue
        ids, t = encode_captions(vocab, r.captions, cfg.max_length)
        truncated += t
        rows += [row_of[r.image]] * len(ids)
        caps += ids
    return _Examples(rows, caps, pooled, grid, vocab.pad_id), truncated


@torch.no_grad()
def evaluate_loss(decoder: Decoder, examples: _Examples, batch_size: int, device: torch.device) -> float:
    """Token-weighted mean cross-entropy over a whole split (dropout off)."""
    decoder.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        pooled, grid, captions = examples.batch(
            list(range(start, min(start + batch_size, len(examples)))), device
        )
        n = int((captions[:, 1:] != examples.pad_id).sum())
        total += float(decoder.loss(pooled, grid, captions)["ce"]) * n
        tokens += n
    decoder.train()
    return total / max(tokens, 1)


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> Path:
    """Run (or resume) training; returns the run folder. `overwrite` replaces a previous capkit run
    in `cfg.output` (never other files: such a folder is refused)."""
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list

    from capkit import runs
    from capkit.encoders import load_encoder
    from capkit.features import extract_features

    cfg.validate()
    # on a machine without a GPU, accelerate treats torchrun's processes as one process each (no
    # gradient sync, every rank training its own copy on all data) unless told it runs on the CPU
    cpu_ranks = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(cpu=cpu_ranks)
    main = accelerator.is_main_process
    log = runs.console().print if main else (lambda *a, **k: None)
    names = [cfg.output or runs.default_output(cfg.decoder)]
    broadcast_object_list(names)  # every process agrees on the folder the main one writes
    out = Path(names[0])
    cfg.output = str(out)
    ckpt_path = out / CHECKPOINT
    checkpoint = None
    if resume:
        if not ckpt_path.is_file():
            raise UserError(f"--resume: {ckpt_path} not found (is {out} a capkit training run?)")
        try:
            checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            saved = checkpoint["config"]
        except Exception as err:  # truncated, garbled or not ours: say so, never a traceback
            reason = (str(err).strip().splitlines() or [""])[0]
            raise UserError(
                f"--resume: {ckpt_path} cannot be read ({type(err).__name__}: {reason})"
            ) from None
        for key in ("decoder", "encoder", "min_count", "max_length", "seed"):
            if saved[key] != getattr(cfg, key):
                raise UserError(
                    f"--resume: {out} was trained with {key}={saved[key]!r}, not {getattr(cfg, key)!r}"
                )
        cfg.decoder_config = saved["decoder_config"]
        changed = [
            f"{k} {saved[k]} -> {getattr(cfg, k)}"
            for k in ("batch_size", "lr")
            if saved[k] != getattr(cfg, k)
        ]
        if changed:  # allowed (e.g. a lower rate to finish), but then no longer the uninterrupted run
            log(f"note: resuming with {', '.join(changed)}: the result will differ from an uninterrupted run")
    elif main:
        from adapt.run_folder import claim_output

        claim_output(out, "capkit", runs.is_run_folder, runs.RUN_ENTRIES, overwrite=overwrite)

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
        feats = extract_features(encoder, images, cfg.cache_dir, grid_dtype=torch.float16, progress=main)
    failed = set(feats["failed"])
    row_of = {p: i for i, p in enumerate(images) if i not in failed}
    train_set, truncated = _examples(train_records, row_of, vocab, cfg, feats["pooled"], feats["grid"])
    val_set, _ = _examples(val_records, row_of, vocab, cfg, feats["pooled"], feats["grid"])

    torch.manual_seed(cfg.seed)
    decoder = build_decoder(
        cfg.decoder, len(vocab), encoder.feature_dim, pad_id=vocab.pad_id, **cfg.decoder_config
    )
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {
        "epoch": 0,
        "best_val": math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "history": [],
        "finished": False,
        "initial_val_loss": None,
    }
    if checkpoint:
        decoder.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        state = {k: checkpoint[k] for k in state}
        state["history"] = [dict(h) for h in state["history"]]
        # A larger --epochs on resume extends a run that had reached its old limit.
        state["finished"] = state["bad_epochs"] >= cfg.patience
        log(f"resuming {out} after epoch {state['epoch']}")
    model, optimizer = accelerator.prepare(_TrainingLoss(decoder), optimizer)
    device = accelerator.device
    world, rank = accelerator.num_processes, accelerator.process_index
    best_state = (
        checkpoint["best_model"] if checkpoint else {k: v.clone() for k, v in decoder.state_dict().items()}
    )
    data_counts = {
        **dataset.stats(),
        "corrupt_images": len(failed),
        "truncated_captions": truncated,
        "train_examples": len(train_set),
        "val_examples": len(val_set),
        "vocab_size": len(vocab),
    }
    if main:
        out.mkdir(parents=True, exist_ok=True)
        log(
            f"{cfg.decoder} decoder · {len(vocab)} words · {len(train_set)} training captions · "
            f"{len(val_set)} validation captions · {len(failed)} unreadable images skipped"
        )

    if not checkpoint:  # the untrained model's loss: the baseline the learning curve starts from
        state["initial_val_loss"] = round(evaluate_loss(decoder, val_set, 256, device), 5)
    from adapt.run_folder import run_lock

    lock = contextlib.ExitStack()
    lock.enter_context(run_lock(out, enabled=main))  # refuses a second run into the same folder
    try:
        epoch = state["epoch"]
        while not state["finished"] and epoch < cfg.epochs:
            epoch += 1
            started = time.perf_counter()
            g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
            order = torch.randperm(len(train_set), generator=g).tolist()
            torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout: same masks after a resume
            global_batch = cfg.batch_size * world
            steps = math.ceil(len(order) / global_batch)
            model.train()
            losses = []
            with runs.progress(main, f"epoch {epoch}/{cfg.epochs}", steps) as advance:
                for s in range(steps):
                    chunk = order[s * global_batch : (s + 1) * global_batch]
                    mine = chunk[rank::world] or chunk[:1]  # every process must step, even on a short tail
                    pooled, grid, captions = train_set.batch(mine, device)
                    loss = model(pooled, grid, captions)
                    if world > 1:
                        loss = loss * _share_of_tokens(captions, train_set.pad_id, bool(chunk[rank::world]))
                    optimizer.zero_grad(set_to_none=True)
                    accelerator.backward(loss)
                    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    optimizer.step()
                    losses.append(float(loss.detach()))
                    advance(1)
            train_loss = float(
                accelerator.reduce(torch.tensor(sum(losses) / len(losses), device=device), "mean")
            )
            val_loss = evaluate_loss(decoder, val_set, 256, device)
            if not math.isfinite(train_loss):
                raise UserError(
                    f"training diverged at epoch {epoch} (loss {train_loss}); lower --lr (now {cfg.lr})"
                )
            state["history"].append(
                {
                    "epoch": epoch,
                    "train_loss": round(train_loss, 5),
                    "val_loss": round(val_loss, 5),
                    "steps": steps,
                    "seconds": round(time.perf_counter() - started, 2),
                }
            )
            improved = val_loss < state["best_val"] - 1e-4
            if improved:
                state.update(best_val=val_loss, best_epoch=epoch, bad_epochs=0)
                best_state = {k: v.detach().cpu().clone() for k, v in decoder.state_dict().items()}
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch
            state["finished"] = state["bad_epochs"] >= cfg.patience or epoch >= cfg.epochs
            log(
                f"epoch {epoch}: train loss {train_loss:.4f} · validation loss {val_loss:.4f}"
                + (" (best)" if improved else "")
            )
            if main:
                _save_checkpoint(ckpt_path, cfg, vocab, decoder, optimizer, best_state, state)
            accelerator.wait_for_everyone()
        if main:
            decoder.load_state_dict(best_state)
            decoder.eval()
            val_rows = sorted({val_set.rows[i] for i in range(len(val_set))})
            rows_to_record = {row_of[r.image]: r for r in val_records if r.image in row_of}
            sample_rows = val_rows[:: max(1, len(val_rows) // 5)][:5]
            pooled, grid = (
                feats["pooled"][sample_rows].to(device),
                feats["grid"][sample_rows].to(device, torch.float32),
            )
            generated = greedy_captions(decoder, pooled, grid, vocab, cfg.max_length)
            samples = [
                {
                    "image": str(rows_to_record[r].image),
                    "generated": c,
                    "references": rows_to_record[r].captions,
                }
                for r, c in zip(sample_rows, generated, strict=True)
            ]
            runs.save_run(out, cfg, vocab, decoder, state, data_counts, samples)
    except KeyboardInterrupt:
        if main:
            _report_interrupt(ckpt_path, cfg)
        raise
    finally:
        lock.close()
    accelerator.wait_for_everyone()
    return out


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

    def forward(self, pooled: torch.Tensor, grid: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        return self.decoder.loss(pooled, grid, captions)["loss"]


def resume_command(cfg: TrainConfig) -> str:
    """The `adapt caption-train ... --resume` line that continues this run with its own settings.

    Every flag that differs from its default is repeated: resume refuses a different decoder,
    encoder, vocabulary or seed, and a different batch size or learning rate would change the result.
    """
    defaults = TrainConfig(data=cfg.data, decoder=cfg.decoder)
    defaults.lr = DEFAULT_LR.get(cfg.decoder)
    args = ["adapt", "caption-train", cfg.data, "--decoder", cfg.decoder]
    for name in ("encoder", "epochs", "batch_size", "lr", "seed", "patience", "min_count", "max_length"):
        if getattr(cfg, name) != getattr(defaults, name):
            args += [f"--{name.replace('_', '-')}", str(getattr(cfg, name))]
    return shlex.join([*args, "--output", str(cfg.output), "--resume"])


def _report_interrupt(ckpt_path: Path, cfg: TrainConfig) -> None:
    """Ctrl-C / SIGTERM: say what was kept and print the exact command that continues the run."""
    from capkit import runs

    # Plain, unwrapped lines: paths and the command must survive copying whatever the terminal's width.
    def say(text: str) -> None:
        runs.console().print(text, markup=False, highlight=False, soft_wrap=True)

    if not ckpt_path.is_file():
        say(
            f"stopped before the first epoch ended; nothing to resume in {cfg.output} (run the command again)"
        )
        return
    epoch = torch.load(ckpt_path, map_location="cpu", weights_only=True)["epoch"]
    say(f"stopped; the checkpoint after epoch {epoch} is kept in {ckpt_path}. Resume with:")
    say(f"  {resume_command(cfg)}")


def _save_checkpoint(
    path: Path, cfg: TrainConfig, vocab: Vocab, decoder: Decoder, optimizer, best_state, state
) -> None:
    payload = {
        "config": asdict(cfg),
        "vocab": vocab.words,
        "model": decoder.state_dict(),
        "optimizer": optimizer.state_dict(),
        "best_model": best_state,
        **state,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
