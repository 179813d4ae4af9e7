"""CNN-Transformer (the Keras "image captioning" example's design): a transformer encoder over
the feature grid (`grid_cells` learned positions: 49 for a 7×7 grid; training sets it from the
encoder), then a masked transformer decoder with learned positional embeddings.

Decoder layers are written out (pre-norm, `scaled_dot_product_attention`) so that `step` can keep
each layer's self-attention keys/values in the state: one step costs one token, and a test checks
that step-by-step decoding gives the same logits as the full causal forward pass.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from capkit.decoders.base import Decoder, ImageNorm, State


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))

    def split(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, W) -> (B, heads, T, W/heads)
        return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(self.split(q), k, v, dropout_p=p, is_causal=causal)
        return self.o(out.transpose(1, 2).flatten(2))


class _DecoderLayer(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.self_attn = _Attention(width, heads, dropout)
        self.cross_attn = _Attention(width, heads, dropout)
        self.ffn = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width)
        )
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        k_self: torch.Tensor,
        v_self: torch.Tensor,
        k_mem: torch.Tensor,
        v_mem: torch.Tensor,
        causal: bool,
    ) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.drop(self.self_attn.attend(self.self_attn.q(h), k_self, v_self, causal))
        x = x + self.drop(self.cross_attn.attend(self.cross_attn.q(self.ln2(x)), k_mem, v_mem, False))
        return x + self.drop(self.ffn(self.ln3(x)))

    def self_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.ln1(x)
        return self.self_attn.split(self.self_attn.k(h)), self.self_attn.split(self.self_attn.v(h))

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cross_attn.split(self.cross_attn.k(memory)), self.cross_attn.split(
            self.cross_attn.v(memory)
        )


class TransformerDecoder(Decoder):
    def __init__(
        self,
        vocab_size: int,
        feature_dim: int,
        width: int = 128,
        heads: int = 4,
        encoder_layers: int = 1,
        decoder_layers: int = 2,
        dropout: float = 0.2,
        max_positions: int = 64,
        grid_cells: int = 49,
        pad_id: int = 0,
    ):
        super().__init__()
        self.vocab_size, self.pad_id, self.max_positions = vocab_size, pad_id, max_positions
        self.image = ImageNorm(feature_dim, width, dropout)
        self.grid_pos = nn.Parameter(torch.zeros(1, grid_cells, width))
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, encoder_layers, enable_nested_tensor=False)
        self.embed = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.pos = nn.Embedding(max_positions, width)
        self.layers = nn.ModuleList(_DecoderLayer(width, heads, dropout) for _ in range(decoder_layers))
        self.ln_out = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(width, vocab_size)
        nn.init.normal_(self.grid_pos, std=0.02)

    def encode(self, grid: torch.Tensor) -> torch.Tensor:
        x = self.image(grid)
        if x.shape[1] > self.grid_pos.shape[1]:
            raise ValueError(
                f"this transformer decoder has positions for {self.grid_pos.shape[1]} grid cells, "
                f"the features have {x.shape[1]} (decoder_config grid_cells)"
            )
        return self.encoder(x + self.grid_pos[:, : x.shape[1]])

    def forward(self, pooled: torch.Tensor, grid: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        memory = self.encode(grid)
        positions = torch.arange(captions.shape[1], device=captions.device)
        x = self.drop(self.embed(captions) + self.pos(positions))
        for layer in self.layers:
            k, v = layer.self_kv(x)
            km, vm = layer.memory_kv(memory)
            x = layer(x, k, v, km, vm, causal=True)
        return self.out(self.ln_out(x))

    def init_state(self, pooled: torch.Tensor, grid: torch.Tensor) -> State:
        memory = self.encode(grid)
        b = memory.shape[0]
        state: State = {"position": torch.zeros(b, dtype=torch.long, device=memory.device)}
        for i, layer in enumerate(self.layers):
            state[f"mem_k{i}"], state[f"mem_v{i}"] = layer.memory_kv(memory)
            empty = state[f"mem_k{i}"][:, :, :0]
            state[f"k{i}"], state[f"v{i}"] = empty, empty
        return state

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        position = state["position"]
        if int(position.max()) >= self.max_positions:
            raise ValueError(f"transformer decoder supports at most {self.max_positions} tokens")
        x = self.embed(tokens).unsqueeze(1) + self.pos(position).unsqueeze(1)  # (B, 1, W)
        new: State = {"position": position + 1}
        for i, layer in enumerate(self.layers):
            k, v = layer.self_kv(x)
            # All earlier keys are visible to the newest token, so no mask is needed.
            new[f"k{i}"] = k = torch.cat([state[f"k{i}"], k], 2)
            new[f"v{i}"] = v = torch.cat([state[f"v{i}"], v], 2)
            new[f"mem_k{i}"], new[f"mem_v{i}"] = state[f"mem_k{i}"], state[f"mem_v{i}"]
            x = layer(x, k, v, state[f"mem_k{i}"], state[f"mem_v{i}"], causal=False)
        return self.out(self.ln_out(x[:, 0])), new
