"""Several trained decoders read as one: at every step, the average of the members' word probabilities.

The members share one encoder and one vocabulary (`capkit.ensemble.make_ensemble` checks both
when it builds an ensemble folder from finished runs). The ensemble follows the `Decoder` contract
(`init_state`, `step`, `reorder_state`), so greedy, no-repeat and beam decoding, `caption-eval`,
`adapt caption` and `adapt serve` use it unchanged. It is never trained itself: train its members.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from adapt.errors import UserError
from capkit.decoders.base import Decoder, State
from capkit.train_config import ENSEMBLE as NAME
from capkit.train_config import NOT_TRAINED


class EnsembleDecoder(Decoder):
    """`members`: one `{"decoder": NAME, "decoder_config": {...}}` per member, as in their runs' config.json."""

    def __init__(
        self, vocab_size: int, feature_dim: int, pad_id: int = 0, members: Sequence[dict[str, Any]] = ()
    ):
        super().__init__()
        if not members:
            raise UserError(f"--decoder {NAME}: {NOT_TRAINED}")
        from capkit.decoders import build_decoder

        self.vocab_size, self.pad_id = vocab_size, pad_id
        self.members = nn.ModuleList(
            build_decoder(m["decoder"], vocab_size, feature_dim, pad_id=pad_id, **m.get("decoder_config", {}))
            for m in members
        )

    def _mean(self, log_probs: list[torch.Tensor]) -> torch.Tensor:
        """log of the members' mean probability (a valid logit: its softmax is that mean)."""
        return torch.logsumexp(torch.stack(log_probs), 0) - math.log(len(log_probs))

    def forward(self, pooled: torch.Tensor, grid: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        return self._mean([m(pooled, grid, captions).float().log_softmax(-1) for m in self.members])

    @staticmethod
    def _part(state: State, i: int) -> State:
        prefix = f"{i}."
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    @staticmethod
    def _prefixed(state: State, i: int) -> State:
        return {f"{i}.{k}": v for k, v in state.items()}

    def init_state(self, pooled: torch.Tensor, grid: torch.Tensor) -> State:
        state: State = {}
        for i, member in enumerate(self.members):
            state.update(self._prefixed(member.init_state(pooled, grid), i))
        return state

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        new: State = {}
        log_probs, alphas = [], []
        for i, member in enumerate(self.members):
            logits, part = member.step(tokens, self._part(state, i))
            log_probs.append(logits.float().log_softmax(-1))
            new.update(self._prefixed(part, i))
            if "alpha" in part:
                alphas.append(part["alpha"].float())
        if alphas:  # `adapt caption --attention-map`: where the attending members looked, on average
            new["alpha"] = torch.stack(alphas).mean(0)
        return self._mean(log_probs), new

    def reorder_state(self, state: State, index: torch.Tensor) -> State:
        out: State = {}
        for i, member in enumerate(self.members):
            out.update(self._prefixed(member.reorder_state(self._part(state, i), index), i))
        if "alpha" in state:
            out["alpha"] = state["alpha"].index_select(0, index)
        return out
