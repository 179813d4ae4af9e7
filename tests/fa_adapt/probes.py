"""Trainer callbacks that look inside a run, for tests: what changed, what got a gradient, which layout."""

from __future__ import annotations

from transformers import TrainerCallback

from fa_adapt.grad_check import gradient_norms
from fa_adapt.quant_layout import is_packed, linear4bit_layers, may_pack


class TrainingProbe(TrainerCallback):
    """Records the trainable tensors at the start and end of training, the per-group gradient norms
    before every optimizer step, and the layout of every 4-bit layer after every evaluation."""

    def __init__(self) -> None:
        self.start: dict = {}
        self.end: dict = {}
        self.grad_norms: dict[int, dict[str, float]] = {}  # step about to be taken -> group -> norm
        self.layouts: list[dict[str, tuple[bool, bool]]] = []  # per evaluation: layer -> (may pack, packed)

    @staticmethod
    def _trainable(model) -> dict:
        return {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start = self._trainable(model)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grad_norms[state.global_step + 1] = gradient_norms(model)

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        self.layouts.append({n: (may_pack(m), is_packed(m)) for n, m in linear4bit_layers(model)})

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.end = self._trainable(model)

    def moved(self, fragment: str) -> dict[str, float]:
        """Largest change of each trainable tensor whose name contains `fragment`."""
        return {n: float((self.end[n] - v).abs().max()) for n, v in self.start.items() if fragment in n}
