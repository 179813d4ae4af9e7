"""The three fine-tuning strategies, keyed by the names the CLI accepts: `prompt`, `lora`, `freeze`.

Each is a config dataclass (its defaults are the source's settings, except LoRA's learning rate)
plus an `apply` function that takes a loaded model and the ids of newly added ChatML tokens and
returns the model to train. The source trained lora 5 epochs, prompt 10 and freeze 3; a default
run makes one pass (`training.DEFAULT_EPOCHS`), and `--epochs` gives the source's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PromptConfig:
    """PEFT prompt tuning: a soft prompt of `num_virtual_tokens` trained vectors, the model frozen."""

    num_virtual_tokens: int = 20
    init_text: str | None = None
    lr: float = 3e-2


@dataclass
class LoraConfig:
    """LoRA on the attention projections; the ChatML embedding rows trained alongside."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    # the source trained 5 epochs at 2e-4 (`--lr 2e-4 --epochs 5`); over the one-epoch default
    # 1e-3 measured better on every answer measure, prompt echo included (docs/fa_adapt.md)
    lr: float = 1e-3


@dataclass
class FreezeConfig:
    """Classic fine-tuning of the first and last decoder layers (loaded unquantized), the rest frozen 4-bit."""

    layers: str = "first,last"
    lr: float = 5e-5


def decoder_layer_names(model_config: Any) -> list[str]:
    """Module names (as bitsandbytes skip modules) of the first and last decoder layers."""
    n = getattr(model_config, "num_hidden_layers", None) or model_config.get_text_config().num_hidden_layers
    return sorted({"model.layers.0", f"model.layers.{n - 1}"})


def apply_prompt(
    model: Any, cfg: PromptConfig, new_token_ids: list[int], tokenizer_path: str | None = None
) -> Any:
    """Wrap `model` for prompt tuning.

    PEFT's prompt-learning configs have no `trainable_token_indices`, so the ChatML rows stay at
    their text-derived initialisation (see chatml.add_chatml_tokens) and the soft prompt learns
    around them.
    """
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    kwargs: dict[str, Any] = {}
    if cfg.init_text and tokenizer_path:
        kwargs = dict(
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=cfg.init_text,
            tokenizer_name_or_path=tokenizer_path,
        )
    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.num_virtual_tokens, **kwargs
    )
    return get_peft_model(model, config)


def apply_lora(model: Any, cfg: LoraConfig, new_token_ids: list[int]) -> Any:
    """Wrap `model` with LoRA adapters; new ChatML rows trained via PEFT `trainable_token_indices`."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model, prepare_model_for_kbit_training

    check_target_modules(model, cfg.target_modules)
    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = PeftLoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        trainable_token_indices=list(new_token_ids) or None,
    )
    return get_peft_model(model, config)


def check_target_modules(model: Any, targets: list[str]) -> None:
    """A one-line `UserError` naming each LoRA target that matches no module of `model`, with the
    closest module names (PEFT matches a target against the end of a module's dotted name)."""
    import difflib

    from adapt.errors import UserError

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


def apply_freeze(model: Any, cfg: FreezeConfig, new_token_ids: list[int]) -> Any:
    """Freeze all but the first/last decoder layers; ChatML rows trained through a PEFT token adapter.

    The token adapter (PEFT `TrainableTokensConfig`) trains only the new rows, not the whole
    tied 262k-row embedding; it is merged back when the run is loaded, giving a plain model.
    """
    from peft import TrainableTokensConfig, get_peft_model

    if new_token_ids:
        model = get_peft_model(model, TrainableTokensConfig(token_indices=list(new_token_ids)))
        base = model.get_base_model()
    else:
        base = model
        for p in base.parameters():
            p.requires_grad = False
    names = decoder_layer_names(base.config)
    for name, module in base.named_modules():
        if name in names:
            for p in module.parameters():
                if not p.dtype.is_floating_point:
                    raise ValueError(f"{name} is quantized; load it with skip_modules={names}")
                p.requires_grad = True
    return model


STRATEGIES: dict[str, type] = {"prompt": PromptConfig, "lora": LoraConfig, "freeze": FreezeConfig}
APPLY = {"prompt": apply_prompt, "lora": apply_lora, "freeze": apply_freeze}


def logical_numel(param: Any) -> int:
    """Number of weights a parameter stands for: a packed 4-bit Params4bit holds two per byte."""
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        n = 1
        for d in quant_state.shape:
            n *= int(d)
        return n
    return param.numel()


def count_parameters(model: Any) -> dict[str, float]:
    """Trainable and total parameters (logical, unpacked sizes) and the trainable percentage."""
    trainable = total = 0
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = logical_numel(p)
        total += n
        if p.requires_grad:
            trainable += n
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / max(total, 1)}
