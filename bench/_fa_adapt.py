"""Pieces the fa_adapt benchmarks share: the model choice (real Gemma 3 270M or a gemma-2-2b-sized
random model for GPUs), quiet logging, and the parameter counts the FLOP estimates use."""

from __future__ import annotations

import os
import sys
from typing import Any

# gemma-2-2b-it's architecture (config.json on the hub); the vocabulary is the bundled Gemma 3
# tokenizer's (262,144 rows instead of 256,000) so the same data and prompts tokenize into it
GEMMA2_2B = dict(
    hidden_size=2304,
    intermediate_size=9216,
    num_hidden_layers=26,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    query_pre_attn_scalar=256,
    sliding_window=4096,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    max_position_embeddings=8192,
)


def quiet() -> None:
    """No download/loading progress bars or advisory warnings in the benchmark output."""
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def check_gpu_flags(device: str, gemma2_2b: bool) -> None:
    """One-line error (exit 2) for a GPU-only setting on a machine without CUDA."""
    import torch

    if gemma2_2b and not (device.startswith("cuda") and torch.cuda.is_available()):
        print(
            "error: --gemma2-2b builds a 2.6-billion-parameter model: it needs --device cuda and a CUDA GPU "
            f"(torch.cuda.is_available() is {torch.cuda.is_available()} here)",
            file=sys.stderr,
        )
        sys.exit(2)


def gemma2_2b_config(vocab_size: int) -> Any:
    """A `Gemma2Config` with gemma-2-2b-it's sizes (random weights are enough for speed)."""
    from transformers import Gemma2Config

    return Gemma2Config(vocab_size=vocab_size, attn_implementation="eager", **GEMMA2_2B)


def model_path(gemma2_2b: bool) -> str | None:
    """None (the embedded Gemma 3 270M) or a cached gemma-2-2b-sized random checkpoint, built once on the GPU."""
    if not gemma2_2b:
        return None
    import torch
    from transformers import Gemma2ForCausalLM

    from fa_adapt.loading import cache_dir, load_tokenizer

    target = cache_dir() / "bench-gemma2-2b-random"
    if (target / "config.json").is_file():
        return str(target)
    tokenizer = load_tokenizer(None)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Gemma2ForCausalLM(gemma2_2b_config(len(tokenizer))).to(torch.bfloat16)
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)
    del model
    torch.cuda.empty_cache()
    return str(target)


def decoder_linear_params(model: Any) -> dict[str, int]:
    """Weights of the decoder's matrix multiplies, counted logically (4-bit packed weights unpacked).

    `frozen`: the base projections; `trainable`: matrices that get a weight gradient (LoRA A/B,
    unquantized layers the freeze strategy trains). Embedding rows and soft-prompt vectors are
    looked up, not multiplied, so they are not here.
    """
    import torch.nn as nn

    from fa_adapt.params import logical_numel

    frozen = trainable = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or ".layers." not in f".{name}":
            continue
        n = logical_numel(module.weight)
        if module.weight.requires_grad:
            trainable += n
        else:
            frozen += n
    return {"frozen": frozen, "trainable": trainable}


def output_projection(model: Any) -> tuple[int, int]:
    """(vocabulary rows, hidden size) of the output projection."""
    cfg = model.config if hasattr(model.config, "vocab_size") else model.config.get_text_config()
    return int(cfg.vocab_size), int(cfg.hidden_size)


def use_peft_token_forward(model: Any) -> None:
    """Undo `fa_adapt.token_rows.use_row_only_forward`: PEFT's own trainable-token forward (the
    baselines train the ChatML rows the way PEFT does)."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    for module in model.modules():
        if isinstance(module, TrainableTokensLayer):
            module.__dict__.pop("forward", None)  # the instance attribute shadowed the class method
