"""HF Trainer with a batch order that depends only on (seed, epoch), so `--resume` sees the same batches.

Trainer's length-grouped sampler draws its shuffle from the global torch RNG when an epoch starts.
A resumed run reaches that point with another RNG history than the run it continues (no step-0
evaluation, a different process), so it would skip the already-trained batches of a *different*
order and train on other rows than the uninterrupted run. Seeding each epoch's shuffle with
`seed + epoch` makes the order reproducible from the checkpoint alone, in one process or many.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from fa_adapt.labeled_loss import LabeledLossMixin


class EpochSeededLengthSampler(LengthGroupedSampler):
    """Length-grouped sampling whose shuffle in epoch `e` is seeded with `seed + e`."""

    def __init__(self, batch_size: int, dataset: Any, seed: int) -> None:
        super().__init__(batch_size, dataset=dataset)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Called by accelerate's data loader at the start of every epoch (also after a resume)."""
        self.generator = torch.Generator().manual_seed(self.seed + epoch)


class ChatTrainer(LabeledLossMixin, Trainer):
    """`Trainer` with `EpochSeededLengthSampler` for training (Trainer's own length grouping otherwise),
    and the loss of `fa_adapt.labeled_loss` (output projection only at labeled positions)."""

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return EpochSeededLengthSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps, dataset, seed
        )

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        """Trainer's step, stopped with a one-line `UserError` when the loss is not finite: every
        later step would only spread NaN through the weights (and Trainer's own log filters it)."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            self._stop(
                f"training stopped at step {self.state.global_step + 1}: the loss became {float(loss)}"
            )
        return loss

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """Trainer's evaluation, stopped before the checkpoint that follows it when the validation
        loss is not finite, so the checkpoints kept are the last good ones."""
        metrics = super().evaluate(*args, **kwargs)
        loss = metrics.get("eval_loss")
        if loss is not None and not math.isfinite(loss):
            self._stop(
                f"training stopped at step {self.state.global_step}: the validation loss became {loss}"
            )
        return metrics

    def _stop(self, what: str) -> None:
        from adapt.errors import UserError
        from fa_adapt.runs import latest_checkpoint

        kept = latest_checkpoint(Path(self.args.output_dir))
        where = f"the last good checkpoint is kept: {kept}" if kept else "no checkpoint had been saved yet"
        raise UserError(f"{what} (lower --lr, now {self.args.learning_rate}); {where}")

    # Checkpoints: Trainer's default saves a PEFT model with its resized 262k-row embedding
    # (1.3 GB per checkpoint on Gemma 3 270M) and without the freeze strategy's unquantized
    # layers, which are not adapter weights, so a resumed freeze run restarted them from the base
    # model. Save the adapter without the embedding (rebuilt deterministically when the run is
    # set up) and every trainable tensor beside it; load them back on resume.
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not hasattr(model, "peft_config"):
            return super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return None
        from safetensors.torch import save_file

        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        model.save_pretrained(output_dir, save_embedding_layers=False, safe_serialization=True)
        trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, os.path.join(output_dir, TRAINABLE_FILE))
        return None

    def _load_best_model(self) -> None:
        """End on the best checkpoint's weights: the adapter as Trainer loads it, plus the trainable
        tensors it does not know (the freeze layers), as a resume loads them."""
        super()._load_best_model()
        self._load_trainable(self.state.best_model_checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_trainable(resume_from_checkpoint, model)

    def _load_trainable(self, checkpoint: str, model: Any = None) -> None:
        path = os.path.join(checkpoint, TRAINABLE_FILE)
        if not os.path.isfile(path):
            return
        from safetensors.torch import load_file

        target = self.accelerator.unwrap_model(model or self.model, keep_torch_compile=False)
        params = dict(target.named_parameters())
        with torch.no_grad():
            for name, value in load_file(path).items():
                if name in params:
                    params[name].copy_(value.to(params[name].dtype))


TRAINABLE_FILE = "trainable.safetensors"
