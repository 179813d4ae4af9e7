"""`adapt export RUN`: a run as one standalone transformers model (merged weights, bf16 by default).

A LoRA run is merged into the *unquantized* base weights: merging into 4-bit weights would round
the low-rank update away into the NF4 grid. A freeze run's trained layers and ChatML rows are
written into the unquantized base the same way. Prompt tuning has no weights to merge (its soft
prompt is an input, not a weight change), so it is refused with the reason.

The folder loads with `AutoModelForCausalLM.from_pretrained` alone (no PEFT, no fa_adapt): it holds
the tokenizer with the ChatML tokens and a ChatML `chat_template`, and a generation config that
stops at `<|im_end|>`. It is built in a staging folder and renamed into place when complete.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from adapt.errors import UserError
from adapt.runio import check_choice, staging_folder, swap_in, write_json
from fa_adapt.chatml import IM_END, IM_START
from fa_adapt.generation import EXPORT_MARKER, stop_token_ids

DTYPES = ("bfloat16", "float16", "float32")

# what `fa_adapt.generation` builds by hand, as a template for `tokenizer.apply_chat_template`
CHATML_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    f"{{{{ '{IM_START}' + message['role'] + '\\n' + message['content'] + '{IM_END}' + '\\n' }}}}"
    "{% endfor %}"
    f"{{% if add_generation_prompt %}}{{{{ '{IM_START}assistant\\n' }}}}{{% endif %}}"
)


def merged_model(run_path: str | Path, device: str = "auto") -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, run config) of a run with every trained part merged into the unquantized
    base weights (fp32); a method with an `export_refusal` (prompt tuning) is refused."""
    from fa_adapt.methods import get_method
    from fa_adapt.runs import load_run, read_run_config

    refusal = get_method(read_run_config(Path(run_path))["method"]).export_refusal
    if refusal:  # said before the model loads
        raise UserError(f"{run_path}: {refusal}")
    # merged in fp32 whatever the hardware computes in, then saved in the asked dtype: a bf16
    # merge would round the weights twice
    run = load_run(run_path, quantization="none", device=device, dtype="fp32")
    model = run.model
    if hasattr(model, "merge_and_unload"):
        with warnings.catch_warnings():  # load_run merged the ChatML rows already; PEFT says so
            warnings.filterwarnings("ignore", message="All adapters are already merged")
            model = model.merge_and_unload()
    return model, run.tokenizer, run.config


def export_run(
    run_path: str | Path, output: str | Path, dtype: str = "bfloat16", device: str = "auto"
) -> Path:
    """Write `run_path` (a lora or freeze run folder) as a merged model in `output`; returns `output`.

    `dtype` is the saved weight type (`bfloat16` by default, as the source model; `float32` keeps
    the merged weights exactly). An existing `output` is replaced only once the new one is complete.
    """
    import torch

    check_choice("--dtype", dtype, DTYPES)
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out}: exists and is not a folder")
    if out.resolve() == Path(run_path).resolve():
        raise UserError(f"--output {out}: must differ from the run folder")
    model, tokenizer, cfg = merged_model(run_path, device=device)
    model = model.to(getattr(torch, dtype))
    stops = stop_token_ids(tokenizer)  # <|im_end|> first: generation stops where fa_adapt's does
    model.config.eos_token_id = stops
    if model.generation_config is not None:
        model.generation_config.eos_token_id = stops
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = True
    tokenizer.chat_template = CHATML_TEMPLATE

    with staging_folder(out.parent) as tmp:
        staged = tmp / out.name
        model.save_pretrained(str(staged), safe_serialization=True)
        tokenizer.save_pretrained(str(staged))
        write_json(
            staged / EXPORT_MARKER,
            {
                "run": str(Path(run_path).resolve()),
                "method": cfg["method"],
                "dtype": dtype,
                "base_model": cfg.get("model") or "Gemma 3 270M (embedded default)",
            },
        )
        from fa_adapt.model_card import write_export_card

        write_export_card(staged, Path(run_path), cfg, dtype)
        swap_in(staged, out)
    return out
