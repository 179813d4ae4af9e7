"""The one interface every decoder implements, so every decoding strategy works with every decoder.

- `forward(pooled, grid, captions) -> logits (B, T, V)`: teacher forcing; `captions` start with the
  start token and `logits[:, t]` predicts `captions[:, t + 1]`.
- `init_state(pooled, grid) -> state`: a dict of tensors whose first dimension is the batch.
- `step(tokens (B,), state) -> (logits (B, V), state)`: one decoding step.
- `reorder_state(state, index) -> state`: select / repeat batch rows (beam search).

A decoder is built as `cls(vocab_size, feature_dim, pad_id=..., **decoder_config)` (`build_decoder`)
and sets `self.vocab_size` and `self.pad_id`; a plug-in registered with `capkit.register_decoder`
follows the same contract and is trained, saved and loaded like the built-in ones.
"""

from __future__ import annotations

import torch
from torch import nn

State = dict[str, torch.Tensor]


class Decoder(nn.Module):
    """Base class: the shared loss and the default `reorder_state`."""

    vocab_size: int
    pad_id: int = 0
    # `--lr` when none is given, for a plug-in (the built-ins' are `capkit.train_config.DEFAULT_LR`)
    default_lr: float = 1e-3

    def init_state(self, pooled: torch.Tensor, grid: torch.Tensor) -> State:
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def reorder_state(self, state: State, index: torch.Tensor) -> State:
        return {k: v.index_select(0, index) for k, v in state.items()}

    def loss(
        self, pooled: torch.Tensor, grid: torch.Tensor, captions: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """`loss` to optimise and `ce`, the per-token cross-entropy on non-pad targets (comparable across decoders)."""
        logits = self(pooled, grid, captions)
        ce = token_cross_entropy(logits, captions, self.pad_id)
        return {"loss": ce, "ce": ce}


def token_cross_entropy(logits: torch.Tensor, captions: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Mean cross-entropy of `logits[:, t]` against `captions[:, t + 1]`, pad targets ignored."""
    return nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), captions[:, 1:].reshape(-1), ignore_index=pad_id
    )


class ImageNorm(nn.Module):
    """LayerNorm + linear projection of encoder features (post-ReLU6 values, 0..6) to the decoder width."""

    def __init__(self, feature_dim: int, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim)
        self.proj = nn.Linear(feature_dim, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.norm(x.float())))
