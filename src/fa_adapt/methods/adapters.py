"""PEFT adapter helpers shared by the methods: loading one with a clear error, merging token rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapt.errors import UserError


def load_adapter(model: Any, adapter: Path, base: str) -> Any:
    """`model` wrapped with the PEFT adapter saved in `adapter`, or a one-line `UserError` (`base`
    names the base model in it)."""
    from peft import PeftModel

    if not adapter.is_dir():
        raise UserError(f"{adapter.parent}: run folder has no {adapter.name}/ (incomplete run)")
    try:
        return PeftModel.from_pretrained(model, str(adapter))
    except (RuntimeError, ValueError) as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        why = next((ln for ln in lines if ln.startswith("size mismatch")), lines[0] if lines else "")
        raise UserError(f"{adapter}: adapter does not fit base model {base} ({why})") from None


def merge_token_rows(model: Any) -> None:
    """Write trained ChatML rows into the embedding once, for inference.

    Unmerged, PEFT's trainable-token layer rebuilds the whole embedding matrix (262k rows on Gemma,
    twice with the tied output head) on every forward: generation from a LoRA run was 6x slower
    than from the base model. Only the trained rows change, so the merge is exact; LoRA weights
    stay unmerged (merging into 4-bit weights would round them).
    """
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    for module in model.modules():
        if isinstance(module, TrainableTokensLayer) and not module.merged:
            module.merge()
