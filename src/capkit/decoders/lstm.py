"""CNN-RNN (Show and Tell style): the pooled image vector initialises the LSTM's h and c."""

from __future__ import annotations

import torch
from torch import nn

from capkit.decoders.base import Decoder, ImageNorm, State


class LSTMDecoder(Decoder):
    def __init__(
        self,
        vocab_size: int,
        feature_dim: int,
        embed_dim: int = 128,
        hidden_dim: int = 256,
        dropout: float = 0.3,
        pad_id: int = 0,
    ):
        super().__init__()
        self.vocab_size, self.pad_id = vocab_size, pad_id
        self.image = ImageNorm(feature_dim, 2 * hidden_dim, dropout)
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def _initial_hc(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = torch.tanh(self.image(pooled)).chunk(2, dim=-1)
        return h.contiguous(), c.contiguous()

    def forward(self, pooled: torch.Tensor, grid: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        h, c = self._initial_hc(pooled)
        hidden, _ = self.lstm(self.drop(self.embed(captions)), (h.unsqueeze(0), c.unsqueeze(0)))
        return self.out(self.drop(hidden))

    def init_state(self, pooled: torch.Tensor, grid: torch.Tensor) -> State:
        h, c = self._initial_hc(pooled)
        return {"h": h, "c": c}

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        x = self.embed(tokens).unsqueeze(1)
        hidden, (h, c) = self.lstm(
            x, (state["h"].unsqueeze(0).contiguous(), state["c"].unsqueeze(0).contiguous())
        )
        return self.out(hidden[:, 0]), {"h": h[0], "c": c[0]}
