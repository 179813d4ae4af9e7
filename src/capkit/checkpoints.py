"""The end-of-epoch checkpoint of a caption-train run: what `--resume` continues from.

`checkpoint.pt` holds the config, the vocabulary, the decoder and optimizer state, the best weights
so far and the fields of `TrainState` as top-level keys (`epoch`, `history`, ...). Once self-critical
training has begun it also holds `scst` (the fields of `capkit.scst.ScstState`, or None before its
first epoch); the decoder, optimizer and best weights are then that phase's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from adapt.errors import UserError
from adapt.runio import atomic_path
from capkit.decoders import Decoder
from capkit.runs import CHECKPOINT
from capkit.train_config import TrainConfig
from capkit.vocab import Vocab

# settings a resumed run must share with the stopped one: anything else would be another run
SAME_ON_RESUME = ("decoder", "encoder", "min_count", "max_length", "seed")
# settings a resumed run may change, at the price of no longer being the uninterrupted run
CHANGEABLE_ON_RESUME = ("batch_size", "lr", "scst_samples", "scst_baseline", "scst_lr", "scst_batch_size")


@dataclass
class TrainState:
    """Where a run stands after its last finished epoch (early stopping's bookkeeping included)."""

    epoch: int = 0
    best_val: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    initial_val_loss: float | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], patience: int) -> TrainState:
        """The state a checkpoint was saved with, `finished` judged by this run's `patience`."""
        state = cls(**{f.name: checkpoint[f.name] for f in fields(cls)})
        state.history = [dict(h) for h in state.history]
        # A larger --epochs on resume extends a run that had reached its old limit, unless
        # self-critical training has begun: cross-entropy epochs never follow it.
        state.finished = state.bad_epochs >= patience or "scst" in checkpoint
        return state

    def record(self, row: dict[str, Any], val_loss: float, patience: int, max_epochs: int) -> bool:
        """Add an epoch's history `row`; returns whether its validation loss is the best so far."""
        self.history.append(row)
        epoch = row["epoch"]
        improved = val_loss < self.best_val - 1e-4
        if improved:
            self.best_val, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
        else:
            self.bad_epochs += 1
        self.epoch = epoch
        self.finished = self.bad_epochs >= patience or epoch >= max_epochs
        return improved


def read_checkpoint(cfg: TrainConfig, log: Callable[[str], Any]) -> dict[str, Any]:
    """The checkpoint in `cfg.output` for `--resume`, checked against `cfg` (one-line `UserError`s);
    `cfg.decoder_config` is taken from it."""
    out = Path(str(cfg.output))
    path = out / CHECKPOINT
    if not path.is_file():
        raise UserError(f"--resume: {path} not found (is {out} a capkit training run?)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        saved = checkpoint["config"]
    except Exception as err:  # truncated, garbled or not ours: say so, never a traceback
        reason = (str(err).strip().splitlines() or [""])[0]
        raise UserError(f"--resume: {path} cannot be read ({type(err).__name__}: {reason})") from None
    for key in SAME_ON_RESUME:
        if saved[key] != getattr(cfg, key):
            raise UserError(
                f"--resume: {out} was trained with {key}={saved[key]!r}, not {getattr(cfg, key)!r}"
            )
    if checkpoint.get("scst") and not cfg.scst_epochs:
        raise UserError(
            f"--resume: {out} stopped in self-critical training; give --scst-epochs too (it was {saved['scst_epochs']})"
        )
    cfg.decoder_config = saved["decoder_config"]
    changed = [
        f"{k} {saved[k]} -> {getattr(cfg, k)}"
        for k in CHANGEABLE_ON_RESUME
        if k in saved and saved[k] != getattr(cfg, k)  # runs from before self-critical training lack some
    ]
    if changed:  # allowed (e.g. a lower rate to finish), but then no longer the uninterrupted run
        log(f"note: resuming with {', '.join(changed)}: the result will differ from an uninterrupted run")
    return checkpoint


def save_checkpoint(
    path: Path,
    cfg: TrainConfig,
    vocab: Vocab,
    decoder: Decoder,
    optimizer: torch.optim.Optimizer,
    best_weights: dict[str, torch.Tensor],
    state: TrainState,
    scst: dict[str, Any] | None = None,
) -> None:
    """Write the checkpoint atomically: a kill leaves the previous epoch's or this one's. `scst`:
    the self-critical phase's state, once it has begun (then the optimizer and weights are its)."""
    payload = {
        "config": asdict(cfg),
        "vocab": vocab.words,
        "model": decoder.state_dict(),
        "optimizer": optimizer.state_dict(),
        "best_model": best_weights,
        **asdict(state),
        **({"scst": scst} if scst is not None else {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def kept_stage(path: Path) -> str:
    """The last finished epoch of checkpoint `path` in words: "epoch 3", "self-critical epoch 2"."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("scst"):
        return f"self-critical epoch {checkpoint['scst']['epoch']}"
    return f"epoch {checkpoint['epoch']}"
