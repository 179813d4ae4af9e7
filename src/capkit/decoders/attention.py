"""Show, Attend and Tell: an LSTM that attends softly over the encoder's 7×7 grid at every word.

The gated context vector (beta) and the doubly stochastic regularisation (each grid cell should
receive about one unit of attention over the whole caption) follow Xu et al. (2015).
"""

from __future__ import annotations

import torch
from torch import nn

from capkit.decoders.base import Decoder, ImageNorm, State, token_cross_entropy


class AttentionDecoder(Decoder):
    def __init__(
        self,
        vocab_size: int,
        feature_dim: int,
        embed_dim: int = 128,
        hidden_dim: int = 256,
        attention_dim: int = 128,
        context_dim: int = 256,
        dropout: float = 0.3,
        alpha_c: float = 1.0,
        pad_id: int = 0,
    ):
        super().__init__()
        self.vocab_size, self.pad_id, self.alpha_c = vocab_size, pad_id, alpha_c
        self.features = ImageNorm(feature_dim, context_dim, 0.0)
        self.init_hc = nn.Linear(context_dim, 2 * hidden_dim)
        self.att_features = nn.Linear(context_dim, attention_dim)
        self.att_hidden = nn.Linear(hidden_dim, attention_dim)
        self.att_score = nn.Linear(attention_dim, 1)
        self.gate = nn.Linear(hidden_dim, context_dim)
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.cell = nn.LSTMCell(embed_dim + context_dim, hidden_dim)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def init_state(self, pooled: torch.Tensor, grid: torch.Tensor) -> State:
        feats = torch.relu(self.features(grid))  # (B, HW, C)
        h, c = torch.tanh(self.init_hc(feats.mean(1))).chunk(2, dim=-1)
        alpha = torch.full(feats.shape[:2], 1.0 / feats.shape[1], device=feats.device)
        return {
            "h": h.contiguous(),
            "c": c.contiguous(),
            "feats": feats,
            "att_feats": self.att_features(feats),
            "alpha": alpha,
        }

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, c, feats, att_feats = state["h"], state["c"], state["feats"], state["att_feats"]
        scores = self.att_score(torch.tanh(att_feats + self.att_hidden(h).unsqueeze(1))).squeeze(-1)
        alpha = scores.softmax(-1)  # (B, HW)
        context = torch.sigmoid(self.gate(h)) * (alpha.unsqueeze(-1) * feats).sum(1)
        h, c = self.cell(torch.cat([self.drop(self.embed(tokens)), context], -1), (h, c))
        logits = self.out(self.drop(h))
        return logits, {"h": h, "c": c, "feats": feats, "att_feats": att_feats, "alpha": alpha}

    def forward(
        self, pooled: torch.Tensor, grid: torch.Tensor, captions: torch.Tensor, return_alphas: bool = False
    ):
        state = self.init_state(pooled, grid)
        logits, alphas = [], []
        for t in range(captions.shape[1]):
            step_logits, state = self.step(captions[:, t], state)
            logits.append(step_logits)
            alphas.append(state["alpha"])
        logits_t, alphas_t = torch.stack(logits, 1), torch.stack(alphas, 1)  # (B, T, V), (B, T, HW)
        return (logits_t, alphas_t) if return_alphas else logits_t

    def loss(
        self, pooled: torch.Tensor, grid: torch.Tensor, captions: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        logits, alphas = self(pooled, grid, captions, return_alphas=True)
        ce = token_cross_entropy(logits, captions, self.pad_id)
        # Only steps that predict a real word count towards each cell's total attention.
        mask = (captions[:, 1:] != self.pad_id).unsqueeze(-1).float()
        total = (alphas[:, :-1] * mask).sum(1)  # (B, HW)
        reg = ((1.0 - total) ** 2).mean()
        return {"loss": ce + self.alpha_c * reg, "ce": ce}
