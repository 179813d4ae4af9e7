"""The first-step gradient guard: a run whose trainable tensors get no gradient stops at step 1.

A falling loss does not prove that a method trains: the two ChatML rows can lower it on their
own while every LoRA, prompt or layer tensor sits still (the bitsandbytes packed-layout bug in
`fa_adapt.quant_layout` did exactly that). So before the first optimizer step of every run, fresh
or resumed, `GradientGuard` checks that each group of trainable tensors received a finite,
non-zero gradient, and that no 4-bit layer is in the layout that drops gradients. A failure stops
the run with a one-line `GradientCheckError` (exit 2) naming the group and the likely cause.

The check reads the gradients already computed (one norm per tensor, a few milliseconds), so it
costs a tiny fraction of a step.
"""

from __future__ import annotations

import math
import time
from typing import Any

from transformers import TrainerCallback

from adapt.errors import UserError
from fa_adapt.quant_layout import packed_layers

# (name fragment, group) pairs, checked in order; parameters matching none are "unfrozen layers"
_GROUPS = (
    ("lora_", "LoRA A/B"),
    ("prompt_encoder", "prompt encoder"),
    ("trainable_tokens", "ChatML rows"),
)


class GradientCheckError(UserError):
    """A group of trainable tensors got no usable gradient: the run would train nothing through it."""


def group_of(param_name: str) -> str:
    """The trainable group a parameter belongs to, for messages and per-group checks."""
    for fragment, group in _GROUPS:
        if fragment in param_name:
            return group
    return "unfrozen layers"


def trainable_groups(model: Any) -> dict[str, list[tuple[str, Any]]]:
    """Trainable parameters of `model`, grouped (`group_of`), in model order."""
    groups: dict[str, list[tuple[str, Any]]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault(group_of(name), []).append((name, param))
    return groups


def gradient_norms(model: Any) -> dict[str, float]:
    """Per group: the L2 norm of all its gradients (a tensor without `.grad` counts as zero;
    NaN or inf when any gradient is not finite). Inside Trainer's `on_pre_optimizer_step` these
    are the gradients after clipping (`max_grad_norm`, 1.0 by default)."""
    import torch

    norms: dict[str, float] = {}
    for group, params in trainable_groups(model).items():
        squares = [p.grad.detach().float().pow(2).sum() for _, p in params if p.grad is not None]
        norms[group] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    return norms


def gradient_problem(model: Any, norms: dict[str, float] | None = None) -> str | None:
    """Why `model`'s current gradients show that some group would not train, or None when all do.

    `norms` are `gradient_norms(model)` when already computed."""
    packed = packed_layers(model)
    if packed:
        return (
            f"{len(packed)} 4-bit layers (e.g. {packed[0]}) are in bitsandbytes' packed CPU inference "
            "layout, which drops gradients; call fa_adapt.quant_layout.keep_trainable_layout(model) "
            "before training"
        )
    for group, norm in (norms if norms is not None else gradient_norms(model)).items():
        # (fp16 loss scaling would need care here: its first steps may overflow by design. fa_adapt
        # trains in fp32 or bf16, which do not scale the loss.)
        if not math.isfinite(norm):
            return (
                f"the {group} got a non-finite gradient at the first step; lower --lr or check the "
                "data and --quantization"
            )
        if norm == 0.0:
            return (
                f"the {group} got no gradient at the first step, so it would never train: a gradient "
                "path is cut between the loss and these tensors (a 4-bit layer without autograd, a "
                "detached output, or a frozen wrapper)"
            )
    return None


class GradientGuard(TrainerCallback):
    """Before the first optimizer step of a run (fresh or resumed), stop with `GradientCheckError`
    if `gradient_problem` finds one. Later steps are not checked. `report()` gives the per-group
    gradient norms it saw and the seconds the check took (written to the run's metrics)."""

    def __init__(self) -> None:
        self.norms: dict[str, float] | None = None
        self.seconds = 0.0

    def report(self) -> dict[str, Any]:
        return {"first_step_grad_norms": self.norms, "seconds": self.seconds}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        if self.norms is not None or model is None:
            return
        started = time.perf_counter()
        self.norms = gradient_norms(model)
        problem = gradient_problem(model, self.norms)
        self.seconds = time.perf_counter() - started
        if problem is not None:
            raise GradientCheckError(f"training stopped before step {state.global_step + 1}: {problem}")
