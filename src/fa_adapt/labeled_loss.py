"""Causal-LM loss that runs the output projection only where a label is: same loss, far less work.

A chat batch carries labels on the assistant's tokens alone (about half the positions of the
bundled data; prompts and padding carry none), yet a causal LM's forward multiplies every
position by the full output projection — for Gemma 3 270M a 262,144 × 640 matrix, more
multiply-adds per position than the whole decoder. `labeled_loss` hands the projection only the
hidden states whose next token has a label (through a forward pre-hook on the output layer, so it
works under PEFT LoRA, prompt tuning and token adapters alike) and computes the same token-mean
cross-entropy as the model's own loss, with the same gradients.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fa_adapt.data import IGNORE_INDEX


def _virtual_tokens(model: Any) -> int:
    """Soft-prompt positions PEFT prepends inside the forward (0 for every other model)."""
    cfg = getattr(model, "active_peft_config", None)
    if cfg is not None and getattr(cfg, "is_prompt_learning", False):
        return int(cfg.num_virtual_tokens)
    return 0


@contextmanager
def _project_only(head: Any, keep: Any) -> Iterator[None]:
    """While active, `head` sees only the hidden states at `keep` (a [batch, positions] bool mask)."""

    def pre_hook(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0][keep].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


def labeled_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> tuple[Any, Any]:
    """(loss, outputs) of `model` on `inputs` (with `labels`), projecting only labeled positions.

    The loss is the summed cross-entropy of the labeled next tokens divided by
    `num_items_in_batch` when given (Trainer's count over the whole accumulated batch) or by
    their own count — exactly the model's own loss. `outputs.logits` has shape
    `[1, labeled positions, vocab]`.
    """
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"]
    targets = labels[:, 1:]
    has_label = targets != IGNORE_INDEX
    # under torchrun the forward goes through the DDP wrapper (it syncs the gradients); the output
    # layer and the PEFT config are the wrapped model's
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    n_virtual = _virtual_tokens(inner)
    batch, width = labels.shape
    keep = torch.zeros(batch, n_virtual + width, dtype=torch.bool, device=labels.device)
    keep[:, n_virtual : n_virtual + width - 1] = has_label
    forward_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    with _project_only(inner.get_output_embeddings(), keep):
        outputs = model(**forward_inputs, use_cache=False)
    logits = outputs.logits[0]
    loss = F.cross_entropy(logits.float(), targets[has_label], reduction="sum")
    denominator = num_items_in_batch if num_items_in_batch is not None else has_label.sum().clamp(min=1)
    return loss / denominator, outputs


class LabeledLossMixin:
    """Mix into a `transformers.Trainer` subclass (before it) to use `labeled_loss` for training and evaluation."""

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        if "labels" not in inputs or getattr(self, "label_smoother", None) is not None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)  # type: ignore[misc]
        loss, outputs = labeled_loss(model, inputs, num_items_in_batch)
        args = self.args  # type: ignore[attr-defined]
        if args.average_tokens_across_devices and num_items_in_batch is not None:
            # Trainer sums num_items_in_batch over processes and DDP averages gradients; undo the average
            loss = loss * self.accelerator.num_processes  # type: ignore[attr-defined]
        return (loss, outputs) if return_outputs else loss
