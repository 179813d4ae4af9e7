"""PEFT prompt tuning: a soft prompt of trained vectors before every input, the model frozen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapt.settings import setting
from fa_adapt.methods.base import Method, register_method


@dataclass
class PromptSettings:
    """The source's soft prompt: 20 virtual tokens."""

    num_virtual_tokens: int = setting(20, "Soft-prompt length in tokens (--method prompt).", check="positive")


@register_method
class Prompt(Method):
    """Prompt tuning. PEFT's prompt-learning configs have no `trainable_token_indices`, so the
    ChatML rows stay at their text-derived initialisation (chatml.add_chatml_tokens) and the soft
    prompt learns around them."""

    name = "prompt"
    Settings = PromptSettings
    default_lr = 3e-2
    row_only_forward = False  # PEFT prepends the prompt to the embedded input itself
    export_refusal = (
        "a prompt-tuning run has no weights to merge (its soft prompt is prepended to the input); "
        "use it through `adapt generate`/`fa_adapt.load_run`"
    )

    def apply(self, model: Any, new_token_ids: list[int]) -> Any:
        from peft import PromptTuningConfig, TaskType, get_peft_model

        config = PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=self.settings.num_virtual_tokens
        )
        return get_peft_model(model, config)
