"""Training examples: (image row, caption ids) pairs over the cached features of a split, batched."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from capkit.data import ImageRecord
from capkit.decoders import Decoder
from capkit.vocab import Vocab


def encode_captions(vocab: Vocab, captions: list[str], max_length: int) -> tuple[list[list[int]], int]:
    """[start] + word ids (at most `max_length`) + [end] per caption; also how many were truncated."""
    out, truncated = [], 0
    for caption in captions:
        ids = vocab.encode(caption)
        truncated += len(ids) > max_length
        out.append([vocab.start_id, *ids[:max_length], vocab.end_id])
    return out, truncated


def pad_batch(seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    """Token sequences as one (B, longest) tensor, padded with `pad_id`."""
    batch = torch.full((len(seqs), max(map(len, seqs))), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = torch.tensor(s)
    return batch


class Examples:
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
        """Pooled features, grid features (float32) and padded captions of examples `idx`."""
        rows = torch.tensor([self.rows[i] for i in idx])
        captions = pad_batch([self.captions[i] for i in idx], self.pad_id)
        return self.pooled[rows].to(device), self.grid[rows].to(device, torch.float32), captions.to(device)


def build_examples(
    records: Sequence[ImageRecord],
    row_of: Mapping[Path, int],
    vocab: Vocab,
    max_length: int,
    pooled: torch.Tensor,
    grid: torch.Tensor,
) -> tuple[Examples, int]:
    """Every caption of every record whose image has features (`row_of`: its row in `pooled` and
    `grid`); also how many captions were truncated to `max_length` words."""
    rows, caps, truncated = [], [], 0
    for r in records:
        if r.image not in row_of:
            continue
        ids, t = encode_captions(vocab, r.captions, max_length)
        truncated += t
        rows += [row_of[r.image]] * len(ids)
        caps += ids
    return Examples(rows, caps, pooled, grid, vocab.pad_id), truncated


@torch.no_grad()
def evaluate_loss(decoder: Decoder, examples: Examples, batch_size: int, device: torch.device) -> float:
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
