"""Run folders: write one after training, load one back with a single call (`load_run`).

Layout: config.json (the settings, flat as flags are named), metrics.json, loss.png, summary.md,
tokenizer files, and what the method writes (`fa_adapt.methods`): `adapter/` (PEFT
save_pretrained, safetensors) for lora/prompt; for freeze `trained_layers.safetensors` (the
first/last decoder layers) plus `adapter/` holding the ChatML token rows.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapt.errors import UserError
from adapt.runio import plot_curves, read_json, staging_folder, write_json, write_text
from fa_adapt.methods import METHODS, Method, get_method


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
            f"- data: {_data_name(cfg)}: {m['train_rows']} train / {m['validation_rows']} validation rows"
            f" ({m['data']['bad_rows']} bad rows skipped, {m['data']['truncated']} truncated, "
            f"{m['data']['skipped_too_long']} too long)",
            f"- steps: {m['steps']} (epochs {m['epochs']:.2f}), lr {cfg['lr']}, batch {cfg['batch_size']}x{cfg['grad_accum']}",
            *(
                [f"- system prompt (trained with, answered with by default): {cfg['system_prompt']}"]
                if cfg.get("system_prompt")
                else []
            ),
            f"- trainable parameters: {m['trainable_params']:,} of {m['total_params']:,} ({m['trainable_percent']:.4f}%)",
            f"- validation loss: {m['initial_eval_loss'] if m['initial_eval_loss'] is None else round(m['initial_eval_loss'], 4)}"
            f" → {m['final_eval_loss']:.4f}",
            _kept_line(m),
            f"- wall time: {m['wall_time_s']:.0f} s, {m['tokens_per_second']:.0f} tokens/s",
            _dtype_line(m),
            _gradient_line(m.get("gradient_check")),
            "",
            "![loss](loss.png)",
            "",
        ]
    )


def _data_name(cfg: dict[str, Any]) -> str:
    """Where the rows came from, and how many of them a run used (`--max-train-rows`)."""
    if cfg["data"]:
        limit = cfg.get("max_train_rows")
        return cfg["data"] + (f" (its first {limit} conversations, --max-train-rows)" if limit else "")
    from fa_adapt.data import default_data_path

    total = sum(1 for line in default_data_path().open(encoding="utf-8") if line.strip())
    used = min(cfg.get("max_train_rows") or total, total)
    return f"packaged Persian data (the first {used} of its {total} conversations, --max-train-rows)"


def _kept_line(m: dict[str, Any]) -> str:
    """Which step's weights the run kept, and whether early stopping ended it."""
    best = m.get("best_step", m["steps"])
    line = (
        f"- kept weights: step {best} of {m['steps']} (the best validation loss, {m['final_eval_loss']:.4f})"
    )
    return line + (
        "; stopped early: the validation loss no longer improved" if m.get("stopped_early") else ""
    )


def _dtype_line(m: dict[str, Any]) -> str:
    """The compute dtype and why (`fa_adapt.device.choose_dtype`)."""
    if "compute_dtype" not in m:  # a run written before --dtype existed
        return "- compute dtype: fp32 (written before --dtype existed)"
    return f"- compute dtype: {m['compute_dtype']} ({m['compute_dtype_reason']}); trained tensors fp32, on {m.get('cpu_kind', '?')}"


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


# What `adapt finetune`, `adapt evaluate` and saving a tokenizer put into every run folder; with the
# methods' own files, what `--overwrite` deletes (and nothing else)
COMMON_ENTRIES = frozenset(
    {
        "config.json",
        "metrics.json",
        "loss.png",
        "summary.md",
        "README.md",
        "checkpoints",
        "tb",
        "eval.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "chat_template.jinja",
        "tokenizer.model",
    }
)


def run_entries() -> frozenset[str]:
    """Every name an fa_adapt run of any registered method may write into its folder."""
    return COMMON_ENTRIES.union(*(cls.run_files for cls in METHODS.values()))


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
        return read_json(folder / "config.json").get("method") in METHODS
    except (UserError, AttributeError):
        return False


def run_metrics(trainer: Any, cfg: Any, stats: Any, evals: dict[str, Any], wall: float) -> dict[str, Any]:
    """metrics.json of a finished training: losses, parameter counts, data counts, speed."""
    from fa_adapt.device import dtype_record
    from fa_adapt.params import count_parameters

    state = trainer.state
    counts = count_parameters(trainer.model)
    n_tokens = sum(len(r["input_ids"]) for r in trainer.train_dataset)
    eval_curve = [(h["step"], h["eval_loss"]) for h in state.log_history if "eval_loss" in h]
    base_eval = evals["initial_eval_loss"]
    if base_eval is not None and not any(step == 0 for step, _ in eval_curve):
        eval_curve.insert(0, (0, base_eval))  # a run resumed from a checkpoint of an older version
    return {
        "method": cfg.method,
        "steps": state.global_step,
        "epochs": state.epoch,
        **evals,
        "train_loss": [(h["step"], h["loss"]) for h in state.log_history if "loss" in h],
        "eval_loss": eval_curve,
        "trainable_params": counts["trainable"],
        "total_params": counts["total"],
        "trainable_percent": counts["percent"],
        "train_rows": len(trainer.train_dataset),
        "validation_rows": len(trainer.eval_dataset),
        "data": dataclasses.asdict(stats),
        "tokens_per_second": n_tokens * (state.epoch or 0) / max(wall, 1e-9),
        "wall_time_s": wall,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        **dtype_record(cfg.device, cfg.compute_dtype),
    }


def write_run(
    out: Path, model: Any, tokenizer: Any, method: Method, cfg: dict[str, Any], metrics: dict[str, Any]
) -> None:
    """Write the run folder (every file atomically): the method's trained parts, tokenizer, metrics,
    plot, summary and, last, the settings `cfg`.

    `config.json` (with `metrics.json`) marks a complete run: it is removed first and written last,
    so a kill at any moment leaves a complete run or an unfinished one that `load_run` names and
    `--resume` finishes from its last checkpoint, never a mix of two runs.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").unlink(missing_ok=True)
    method.save(model, out)
    with staging_folder(out) as tmp:
        tokenizer.save_pretrained(str(tmp))
        for f in tmp.iterdir():  # each file renamed over the old one: never half-written
            os.replace(f, out / f.name)
    write_json(out / "metrics.json", metrics)
    curves = {"train": metrics["train_loss"], "validation": metrics["eval_loss"]}
    curves[f"kept (best, step {metrics['best_step']})"] = [(metrics["best_step"], metrics["final_eval_loss"])]
    plot_curves(out / "loss.png", curves, title=f"fa_adapt {cfg['method']}: loss")
    write_text(out / "summary.md", _summary(cfg, metrics))
    from fa_adapt.model_card import write_run_card

    write_run_card(out, cfg, metrics)
    write_json(out / "config.json", cfg)  # last: its presence with metrics marks a complete run


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
    if not isinstance(cfg, dict) or cfg.get("method") not in METHODS:
        method = cfg.get("method") if isinstance(cfg, dict) else None
        raise UserError(f"{folder / 'config.json'}: not an fa_adapt run config (method {method!r})")
    return cfg


def load_run(
    path: str | Path, quantization: str | None = None, device: str = "auto", dtype: str = "auto"
) -> Run:
    """Load a run folder written by `finetune`: base model + trained parts, tokenizer, config, on
    `device` computing in `dtype` (`fa_adapt.device`: a GPU when there is one; bf16 where the
    hardware has it)."""
    from fa_adapt.loading import load_model, resolve_model_path

    folder = Path(path)
    cfg = read_run_config(folder)
    method = get_method(cfg["method"])  # only its hooks: what it trained is read from the folder
    quant = quantization or cfg.get("quantization", "nf4")
    base_path = resolve_model_path(cfg.get("model"))
    model = load_model(
        base_path,
        quantization=quant,
        keep_unquantized=method.keep_unquantized,
        for_training=False,
        device=device,
        dtype=dtype,
    )
    tokenizer = _run_tokenizer(folder, base_path, model)
    model = method.load(model, folder, base_path)
    model.eval()
    if hasattr(model, "config"):
        model.config.use_cache = True
    return Run(model=model, tokenizer=tokenizer, config=cfg, path=folder, method=method.name)


def _run_tokenizer(folder: Path, base_path: str, model: Any) -> Any:
    """The run's tokenizer, after the base model got the same ChatML rows as in training."""
    from fa_adapt.chatml import add_chatml_tokens
    from fa_adapt.loading import load_tokenizer

    # as saved, exactly as trained; also keeps transformers from taking the run's own config.json
    # (no model_type) for an old Mistral checkpoint's and warning about a Mistral regex
    tokenizer = load_tokenizer(str(folder), fix_mistral_regex=False)
    base_tokenizer = load_tokenizer(base_path)
    add_chatml_tokens(base_tokenizer, model)  # same rows as in training, before the trained deltas
    if len(base_tokenizer) != len(tokenizer):
        raise UserError(
            f"{folder}: tokenizer has {len(tokenizer)} tokens, base model {base_path} gives {len(base_tokenizer)}"
        )
    return tokenizer
