"""Dynamic per-batch padding: each batch is padded to its own longest row, not to a fixed length.

Training pads on the right (labels there are -100, so padding costs compute but never loss);
length-grouped sampling (Trainer's `group_by_length`) keeps rows of a batch close in length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fa_adapt.data import IGNORE_INDEX


@dataclass
class ChatCollator:
    """Pad `input_ids`/`labels` rows of a batch to the batch's longest row (right padding)."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
