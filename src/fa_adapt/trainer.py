"""HF Trainer with a batch order that depends only on (seed, epoch), so `--resume` sees the same batches.

Trainer's length-grouped sampler draws its shuffle from the global torch RNG when an epoch starts.
A resumed run reaches that point with another RNG history than the run it continues (no step-0
evaluation, a different process), so it would skip the already-trained batches of a *different*
order and train on other rows than the uninterrupted run. Seeding each epoch's shuffle with
`seed + epoch` makes the order reproducible from the checkpoint alone, in one process or many.
"""

from __future__ import annotations

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
