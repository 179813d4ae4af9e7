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
    prompt_init_text: str | None = setting(
        None,
        "Start the soft prompt from this text's embeddings, e.g. a Persian instruction (--method prompt).",
        default_text="random",
    )


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
        from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

        init: dict[str, Any] = {}
        if self.settings.prompt_init_text:  # PEFT tokenizes it with the base model's tokenizer
            init = dict(
                prompt_tuning_init=PromptTuningInit.TEXT,
                prompt_tuning_init_text=self.settings.prompt_init_text,
                tokenizer_name_or_path=model.config._name_or_path,
            )
        config = PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=self.settings.num_virtual_tokens, **init
        )
        return get_peft_model(model, config)
