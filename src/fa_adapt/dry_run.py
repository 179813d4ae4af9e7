"""`adapt finetune --dry-run`: the trainable-parameter table of each method (the source's table 1.2)
from a model's config alone, built on the meta device: no weights load, nothing downloads when the
config is local or shipped (`configs/`: gemma-2-2b-it's public config.json, a few hundred bytes).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from adapt.runio import check_choice
from adapt.settings import settings_from

SHIPPED = Path(__file__).parent / "configs"
# names a user may give for a shipped config (a local folder of the same name wins)
ALIASES = {
    "gemma-2-2b": "gemma-2-2b-it",
    "gemma-2-2b-it": "gemma-2-2b-it",
    "google/gemma-2-2b-it": "gemma-2-2b-it",
}
CHATML_ROWS = 2  # <|im_start|> and <|im_end|>, added to the vocabulary by every method


def model_config(model: str | None) -> tuple[Any, str]:
    """The config of `model` (a folder, a shipped name, a hub id or None = the embedded Gemma) and where it came from."""
    from fa_adapt import loading

    if model is not None and not Path(model).exists() and model in ALIASES:
        config, _ = loading.model_config(str(SHIPPED / ALIASES[model]))
        return config, f"{ALIASES[model]} (config shipped with fa_adapt)"
    return loading.model_config(model)


def _meta_model(config: Any) -> Any:
    """The model of `config` on the meta device, with the two ChatML rows added."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.resize_token_embeddings(config.vocab_size + CHATML_ROWS, mean_resizing=False)
    return model


def method_row(config: Any, name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """One row of the table: the method's own trainable parameters, the ChatML rows beside them."""
    import torch

    from fa_adapt.grad_check import group_of
    from fa_adapt.methods import METHODS, get_method
    from fa_adapt.params import count_parameters, logical_numel

    config = copy.deepcopy(config)  # resizing the embedding writes the new vocabulary size into it
    fields = {f.name for f in dataclasses.fields(METHODS[name].Settings)} - {"prompt_init_text"}
    method = get_method(
        name, settings_from(METHODS[name].Settings, {k: v for k, v in settings.items() if k in fields})
    )
    vocab = config.vocab_size
    base = _meta_model(config)
    total = count_parameters(base)["total"] - CHATML_ROWS * config.hidden_size  # the model as published
    with torch.device("meta"):
        model = method.apply(base, [vocab, vocab + 1])
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    rows = sum(logical_numel(p) for n, p in trainable.items() if group_of(n) == "ChatML rows")
    own = sum(logical_numel(p) for n, p in trainable.items() if group_of(n) != "ChatML rows")
    return {
        "method": name,
        "trainable": own,
        "percent": 100.0 * own / total,
        "chatml_rows": rows,
        "total": total,
    }


# The source's LoRA targets; the default is all-linear (recipe study), so without --target-modules
# the table also shows LoRA as the source ran it, the figure its table 1.2 reports
SOURCE_LORA_TARGETS = ["q_proj", "v_proj"]


def parameter_table(model: str | None, methods: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    """The table for `methods` on `model`'s config, with each method's settings from `settings`."""
    config, source = model_config(model)
    rows = []
    for name in methods:
        rows.append(method_row(config, name, settings))
        if name == "lora" and not settings.get("target_modules"):
            row = method_row(config, name, {**settings, "target_modules": SOURCE_LORA_TARGETS})
            rows.append({**row, "method": "lora (source: q/v)"})
    return {"model": source, "hidden_size": config.hidden_size, "rows": rows}


def show(table: dict[str, Any], as_json: bool) -> None:
    """The table on stderr (Rich), or as JSON on stdout."""
    import json

    from rich.table import Table

    from adapt.console import stderr_console

    if as_json:
        print(json.dumps(table, indent=2))
        return
    out = Table(title=f"Trainable parameters: {table['model']} (no weights loaded)")
    for column in ("method", "trainable", "% of model", "ChatML rows"):
        out.add_column(column, justify="left" if column == "method" else "right")
    for r in table["rows"]:
        rows = f"{CHATML_ROWS} × {table['hidden_size']:,} = {r['chatml_rows']:,}" if r["chatml_rows"] else "-"
        out.add_row(r["method"], f"{r['trainable']:,}", f"{r['percent']:.4f}%", rows)
    stderr_console().print(out)


def dry_run(settings: dict[str, Any], as_json: bool = False) -> dict[str, Any]:
    """`adapt finetune --dry-run`: the table for `settings["method"]` (or every method for `all`)."""
    from fa_adapt.methods import METHODS

    name = settings.get("method") or "lora"
    if name != "all":
        check_choice("--method", name, [*METHODS, "all"])
    table = parameter_table(settings.get("model"), list(METHODS) if name == "all" else [name], settings)
    show(table, as_json)
    return table
