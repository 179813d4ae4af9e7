"""The model card of an fa_adapt run folder and of an `adapt export` folder, from their own files
(config.json, metrics.json, eval.json when `adapt evaluate` wrote one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapt.model_card import table, write_card
from adapt.runio import read_json
from fa_adapt.data import is_hub_name

EMBEDDED = "google/gemma-3-270m"  # what the embedded GGUF (Q4_K_M) was converted from
LIMITS = """## Intended use and limits

For trying Persian chat adaptation on modest hardware and for research. The answers come from a
small model adapted briefly: they can be wrong, invented, or echo the question, and they were not
checked for safety. Do not rely on them for advice or facts; read the held-out metrics above before
using the model for anything."""


def _metadata(cfg: dict[str, Any], library: str) -> dict[str, Any]:
    return {
        "base_model": cfg.get("model") or EMBEDDED,
        "library_name": library,
        "language": ["fa"],
        "license": "gemma" if "gemma" in str(cfg.get("model") or EMBEDDED).lower() else None,
        "pipeline_tag": "text-generation",
        "tags": ["fa_adapt", cfg["method"], "persian", "chatml", "conversational"],
        "datasets": [cfg["data"]] if is_hub_name(cfg.get("data")) else None,
    }


def _results(folder: Path, m: dict[str, Any]) -> str:
    rows = [
        ("validation loss (assistant tokens)", f"{m.get('initial_eval_loss')} → {m['final_eval_loss']:.4f}"),
        ("kept weights", f"step {m.get('best_step', m['steps'])} of {m['steps']}"),
        (
            "trainable parameters",
            f"{m['trainable_params']:,} of {m['total_params']:,} ({m['trainable_percent']:.4f}%)",
        ),
        ("data", f"{m['train_rows']} training / {m['validation_rows']} validation conversations"),
    ]
    if "compute_dtype" in m:
        rows.append(
            (
                "compute dtype",
                f"{m['compute_dtype']} on {m.get('cpu_kind', '?')}: {m['compute_dtype_reason']}",
            )
        )
    if (folder / "eval.json").is_file():
        report = read_json(folder / "eval.json")
        for key, value in sorted(report.get("run", {}).items()):
            change = report.get("change", {}).get(key)
            rows.append(
                (
                    f"held-out {key}",
                    f"{value:.4g}" + (f" ({change:+.4g} vs base)" if change is not None else ""),
                )
            )
    return "## Results\n\n" + table(rows) + "\n\n![loss](loss.png)"


def write_run_card(folder: Path, cfg: dict[str, Any] | None = None, m: dict[str, Any] | None = None) -> Path:
    """README.md of a run folder, from its settings and metrics (read from the folder when not given)."""
    cfg = cfg if cfg is not None else read_json(folder / "config.json")
    m = m if m is not None else read_json(folder / "metrics.json")
    settings = [(k, f"`{v}`") for k, v in cfg.items() if k not in ("chatml_token_ids", "resume", "overwrite")]
    body = f"""# {folder.name}: {cfg["method"]} fine-tuning of {cfg.get("model") or EMBEDDED} for Persian chat

Trained with `adapt finetune --method {cfg["method"]}` (fa_adapt) on {cfg.get("quantization", "nf4")}
base weights: ChatML turns, loss on the assistant's tokens only.

{_results(folder, m)}

## Use

```python
import fa_adapt
run = fa_adapt.load_run("{folder.name}")
print(fa_adapt.generate(run, "سلام! حالت چطور است؟").answer)
```

or `adapt generate {folder.name} "سلام"`; `adapt export {folder.name}` writes a plain transformers model
(LoRA and freeze runs).

## Settings

{table(settings)}

{LIMITS}
"""
    from fa_adapt.methods import get_method

    return write_card(folder, _metadata(cfg, get_method(cfg["method"]).library_name), body)


def write_export_card(folder: Path, run: Path, cfg: dict[str, Any], dtype: str) -> Path:
    """README.md of an `adapt export` folder (a plain transformers model)."""
    results = _results(run, read_json(run / "metrics.json")).replace("![loss](loss.png)", "")
    body = f"""# {folder.name}: {cfg["method"]} run `{run.name}` merged into {cfg.get("model") or EMBEDDED}

Standalone weights ({dtype}): loads with `transformers` alone, ChatML chat template included;
generation stops at `<|im_end|>`.

{results}

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("{folder.name}")
model = AutoModelForCausalLM.from_pretrained("{folder.name}")
ids = tok.apply_chat_template([{{"role": "user", "content": "سلام"}}], add_generation_prompt=True, return_tensors="pt")
print(tok.decode(model.generate(ids, max_new_tokens=100)[0][ids.shape[1]:], skip_special_tokens=True))
```

{LIMITS}
"""
    return write_card(folder, _metadata(cfg, "transformers"), body)
