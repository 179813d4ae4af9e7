"""Run folders: write one after training, load one back with a single call (`load_run`).

Layout: config.json, metrics.json, loss.png, summary.md, tokenizer files, and either `adapter/`
(PEFT save_pretrained, safetensors) for lora/prompt or, for freeze, `trained_layers.safetensors`
(the first/last decoder layers) plus `adapter/` holding the ChatML token rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapt.errors import UserError
from adapt.runio import atomic_path, plot_curves, read_json, staging_folder, swap_in, write_json, write_text
from fa_adapt.strategies import STRATEGIES

LAYERS_FILE = "trained_layers.safetensors"


@dataclass
class Run:
    """A trained run loaded back: model in eval mode, tokenizer with ChatML tokens, resolved config."""

    model: Any
    tokenizer: Any
    config: dict[str, Any]
    path: Path
    method: str


def _summary(cfg: dict[str, Any], m: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"# fa_adapt run: {cfg['method']}",
            "",
            f"- model: {cfg['model'] or 'Gemma 3 270M (embedded default)'} ({cfg['quantization']})",
            f"- data: {cfg['data'] or 'packaged Persian sample'}: {m['train_rows']} train / {m['validation_rows']} validation rows"
            f" ({m['data']['bad_rows']} bad rows skipped, {m['data']['truncated']} truncated, "
            f"{m['data']['skipped_too_long']} too long)",
            f"- steps: {m['steps']} (epochs {m['epochs']:.2f}), lr {cfg['lr']}, batch {cfg['batch_size']}x{cfg['grad_accum']}",
            f"- trainable parameters: {m['trainable_params']:,} of {m['total_params']:,} ({m['trainable_percent']:.4f}%)",
            f"- validation loss: {m['initial_eval_loss'] if m['initial_eval_loss'] is None else round(m['initial_eval_loss'], 4)}"
            f" → {m['final_eval_loss']:.4f}",
            f"- wall time: {m['wall_time_s']:.0f} s, {m['tokens_per_second']:.0f} tokens/s",
            _gradient_line(m.get("gradient_check")),
            "",
            "![loss](loss.png)",
            "",
        ]
    )


def _gradient_line(check: dict[str, Any] | None) -> str:
    """The first-step gradient check in one line (`fa_adapt.grad_check`)."""
    norms = (check or {}).get("first_step_grad_norms")
    if not norms:
        return "- gradient check: not run (no optimizer step in this process)"
    listed = ", ".join(f"{group} {norm:.3g}" for group, norm in norms.items())
    return (
        "- gradient check at the first step: every trainable group got a gradient "
        f"(norms after clipping: {listed})"
    )


# Everything `adapt finetune`, `adapt evaluate` and saving a tokenizer put into a run folder:
# `--overwrite` deletes these and nothing else
RUN_ENTRIES = frozenset(
    {
        "config.json",
        "metrics.json",
        "loss.png",
        "summary.md",
        "adapter",
        LAYERS_FILE,
        "checkpoints",
        "eval.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "chat_template.jinja",
        "tokenizer.model",
    }
)


def latest_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint: Trainer writes trainer_state.json last, so one without a
    readable state was cut short by a kill and is passed over for the one before it."""

    def complete(p: Path) -> bool:
        try:
            json.loads((p / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return True

    steps = [
        (int(p.name.split("-")[-1]), p)
        for p in folder.glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit()
    ]
    done = [p for _, p in sorted(steps) if complete(p)]
    return str(done[-1]) if done else None


def is_run_folder(folder: Path) -> bool:
    """True when `folder` holds an fa_adapt run, finished or stopped (its config or resume file)."""
    if (folder / "checkpoints" / "resume.json").is_file():
        return True
    try:
        return read_json(folder / "config.json").get("method") in STRATEGIES
    except (UserError, AttributeError):
        return False


def write_run(out: Path, model: Any, tokenizer: Any, cfg: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Write the run folder (every file atomically).

    `config.json` (with `metrics.json`) marks a complete run: it is removed first and written last,
    so a kill at any moment leaves a complete run or an unfinished one that `load_run` names and
    `--resume` finishes from its last checkpoint, never a mix of two runs.
    """
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").unlink(missing_ok=True)
    if cfg["method"] == "freeze":
        from fa_adapt.strategies import decoder_layer_names

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        names = decoder_layer_names(base.config)
        tensors = {
            k: v.detach().cpu().contiguous()
            for k, v in base.state_dict().items()
            if any(k.startswith(n + ".") for n in names)
        }
        with atomic_path(out / LAYERS_FILE) as tmp:
            save_file(tensors, str(tmp))
    if hasattr(model, "save_pretrained") and hasattr(model, "peft_config"):
        # the resized embedding is rebuilt at load time (add_chatml_tokens is deterministic) and the
        # trained ChatML rows are in the adapter's token deltas: never copy the 262k-row matrix
        with staging_folder(out) as tmp:
            model.save_pretrained(str(tmp / "adapter"), safe_serialization=True, save_embedding_layers=False)
            swap_in(tmp / "adapter", out / "adapter")
    with staging_folder(out) as tmp:
        tokenizer.save_pretrained(str(tmp))
        for f in tmp.iterdir():  # each file renamed over the old one: never half-written
            os.replace(f, out / f.name)
    write_json(out / "metrics.json", metrics)
    plot_curves(
        out / "loss.png",
        {"train": metrics["train_loss"], "validation": metrics["eval_loss"]},
        title=f"fa_adapt {cfg['method']}: loss",
    )
    write_text(out / "summary.md", _summary(cfg, metrics))
    write_json(out / "config.json", cfg)  # last: its presence with metrics marks a complete run


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


def read_run_config(folder: Path) -> dict[str, Any]:
    """The config of the finished fa_adapt run in `folder`, or a one-line `UserError` that says
    what `folder` is instead (missing, a file, a captioning run, a stopped run) and what to do."""
    if not folder.exists():
        raise UserError(f"{folder}: does not exist")
    if not folder.is_dir():
        raise UserError(f"{folder}: is a file, not a run folder")
    if (folder / "decoder.safetensors").is_file() or (folder / "word_to_id.json").is_file():
        raise UserError(
            f"{folder}: a captioning run (capkit), not a chat run; use: adapt caption IMAGE --model {folder}"
        )
    if not (folder / "config.json").is_file() or not (folder / "metrics.json").is_file():
        if (folder / "checkpoints" / "resume.json").is_file():
            from fa_adapt.training import resume_hint

            if latest_checkpoint(folder / "checkpoints"):
                raise UserError(
                    f"{folder}: a run stopped before it finished; resume it with: {resume_hint(folder)}"
                )
            raise UserError(
                f"{folder}: a run stopped before its first checkpoint, so there is nothing to load or "
                f"resume; start it again with: adapt finetune --output {folder} --overwrite"
            )
        raise UserError(f"{folder}: not a run folder (no config.json / metrics.json from `adapt finetune`)")
    cfg = read_json(folder / "config.json")
    if not isinstance(cfg, dict) or cfg.get("method") not in STRATEGIES:
        method = cfg.get("method") if isinstance(cfg, dict) else None
        raise UserError(f"{folder / 'config.json'}: not an fa_adapt run config (method {method!r})")
    return cfg


def load_run(path: str | Path, quantization: str | None = None) -> Run:
    """Load a run folder written by `finetune`: base model + trained parts, tokenizer, config."""
    import torch

    from fa_adapt.chatml import add_chatml_tokens
    from fa_adapt.loading import load_model, load_tokenizer, resolve_model_path
    from fa_adapt.strategies import decoder_layer_names

    folder = Path(path)
    cfg = read_run_config(folder)
    method = cfg["method"]
    quant = quantization or cfg.get("quantization", "nf4")
    base_path = resolve_model_path(cfg.get("model"))
    skip = None
    if method == "freeze" and quant == "nf4":
        from transformers import AutoConfig

        skip = decoder_layer_names(AutoConfig.from_pretrained(base_path))
    model = load_model(base_path, quantization=quant, skip_modules=skip, for_training=False)
    # as saved, exactly as trained; also keeps transformers from taking the run's own config.json
    # (no model_type) for an old Mistral checkpoint's and warning about a Mistral regex
    tokenizer = load_tokenizer(str(folder), fix_mistral_regex=False)
    base_tokenizer = load_tokenizer(base_path)
    add_chatml_tokens(base_tokenizer, model)  # same rows as in training, before the trained deltas
    if len(base_tokenizer) != len(tokenizer):
        raise UserError(
            f"{folder}: tokenizer has {len(tokenizer)} tokens, base model {base_path} gives {len(base_tokenizer)}"
        )
    adapter = folder / "adapter"
    if method in ("lora", "prompt") or adapter.is_dir():
        from peft import PeftModel

        if not adapter.is_dir():
            raise UserError(f"{folder}: run folder has no adapter/ (incomplete run)")
        try:
            model = PeftModel.from_pretrained(model, str(adapter))
        except (RuntimeError, ValueError) as err:
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            why = next((ln for ln in lines if ln.startswith("size mismatch")), lines[0] if lines else "")
            raise UserError(f"{adapter}: adapter does not fit base model {base_path} ({why})") from None
        if method == "freeze":
            model = model.merge_and_unload()
        else:
            merge_token_rows(model)
    if method == "freeze":
        from safetensors.torch import load_file

        layers = folder / LAYERS_FILE
        if not layers.is_file():
            raise UserError(f"{folder}: run folder has no {LAYERS_FILE} (incomplete run)")
        state = load_file(str(layers))
        missing = [
            k
            for k in state
            if k not in dict(model.named_parameters()) and k not in dict(model.named_buffers())
        ]
        if missing:
            raise UserError(f"{layers}: weights do not fit base model {base_path} (e.g. {missing[0]})")
        with torch.no_grad():
            params = dict(model.named_parameters())
            for k, v in state.items():
                if k in params:
                    params[k].copy_(v.to(params[k].dtype))
    model.eval()
    if hasattr(model, "config"):
        model.config.use_cache = True
    return Run(model=model, tokenizer=tokenizer, config=cfg, path=folder, method=method)
