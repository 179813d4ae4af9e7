"""LoRA on the attention projections, the new ChatML embedding rows trained alongside."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapt.errors import UserError
from adapt.settings import setting
from fa_adapt.methods.base import Method, register_method


@dataclass
class LoraSettings:
    """LoRA settings: the source's r 16, alpha 32 and dropout 0.1, on every linear layer (the source
    used q/v only; all-linear measured better at the same cost, docs/fa_adapt.md, recipe study)."""

    lora_r: int = setting(16, "LoRA rank (--method lora).", check="positive")
    lora_alpha: int = setting(32, "LoRA scaling alpha (--method lora).", check="positive")
    lora_dropout: float = setting(0.1, "Dropout on the LoRA input (--method lora).", check="non_negative")
    target_modules: list[str] = setting(
        default_factory=lambda: ["all-linear"],
        help="LoRA target modules, comma separated, or all-linear (--method lora).",
    )
    use_dora: bool = setting(False, "DoRA: weight-decomposed LoRA (--method lora).")
    use_rslora: bool = setting(False, "rsLoRA: scale by alpha/sqrt(r) instead of alpha/r (--method lora).")


@register_method
class Lora(Method):
    """PEFT LoRA; the ChatML rows through PEFT's `trainable_token_indices`."""

    name = "lora"
    Settings = LoraSettings
    # the source trained 5 epochs at 2e-4 (`--lr 2e-4 --epochs 5`); over the one-epoch default
    # 1e-3 measured better on every answer measure, prompt echo included (docs/fa_adapt.md)
    default_lr = 1e-3

    def apply(self, model: Any, new_token_ids: list[int]) -> Any:
        import torch
        from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

        s = self.settings
        check_target_modules(model, s.target_modules)
        if getattr(model, "is_loaded_in_4bit", False) and model.dtype == torch.float16:
            # PEFT's recipe casts every unquantized weight to fp32, which fp16's narrow range needs;
            # bf16 has fp32's range, so its frozen norms and 262k-row embedding stay bf16 (half the
            # memory, and 1.2x faster steps on an AVX512-BF16 CPU)
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        config = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=s.lora_r,
            lora_alpha=s.lora_alpha,
            lora_dropout=s.lora_dropout,
            # PEFT takes "all-linear" as the whole value, not as a module name in a list
            target_modules="all-linear" if "all-linear" in s.target_modules else list(s.target_modules),
            use_dora=s.use_dora,
            use_rslora=s.use_rslora,
            trainable_token_indices=list(new_token_ids) or None,
        )
        return get_peft_model(model, config)


def check_target_modules(model: Any, targets: list[str]) -> None:
    """A one-line `UserError` naming each LoRA target that matches no module of `model`, with the
    closest module names (PEFT matches a target against the end of a module's dotted name)."""
    import difflib

    names = [name for name, _ in model.named_modules() if name]
    leaves = sorted({name.rsplit(".", 1)[-1] for name in names})
    for target in targets:
        if target == "all-linear" or any(n == target or n.endswith("." + target) for n in names):
            continue
        close = difflib.get_close_matches(target, leaves, n=3, cutoff=0.5)
        hint = (
            f"; did you mean {', '.join(close)}?"
            if close
            else f"; the model has e.g. {', '.join(leaves[:6])}"
        )
        raise UserError(f"--target-modules: {target!r} matches no module of the model{hint}")
