"""Side-by-side comparison of the base model and runs: answers, trainable parameters, loss curves.

The source's three results (table 1.1: answers of each model to the same prompts; table 1.2:
trainable parameters per method; a loss curve per method) as one call writing `compare.json`,
`compare.md` and `loss_compare.png` into one folder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from adapt.errors import UserError
from adapt.runio import plot_curves, read_json, write_json, write_text
from fa_adapt.device import dtype_record
from fa_adapt.generation import BASE, DEFAULT_MAX_NEW_TOKENS, Target, generate_batch


def default_prompts_path() -> Path:
    """The source's six Persian prompts (table 1.1), one per line."""
    return Path(__file__).parent / "data" / "prompts_fa.txt"


def run_facts(run_dir: str | Path) -> dict[str, Any]:
    """Method, trainable parameters and loss curves of a run folder (from config.json / metrics.json)."""
    folder = Path(run_dir)
    if not (folder / "config.json").is_file() or not (folder / "metrics.json").is_file():
        raise UserError(f"{folder}: not a run folder (no config.json / metrics.json from `adapt finetune`)")
    cfg, m = read_json(folder / "config.json"), read_json(folder / "metrics.json")
    return {
        "run": str(folder),
        "method": cfg.get("method"),
        "trainable_params": m.get("trainable_params"),
        "total_params": m.get("total_params"),
        "trainable_percent": m.get("trainable_percent"),
        "final_eval_loss": m.get("final_eval_loss"),
        "train_loss": m.get("train_loss") or [],
        "eval_loss": m.get("eval_loss") or [],
    }


def answer_table(
    targets: Sequence[Callable[[], Target]],
    prompts: Sequence[str],
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 4,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """{model label: [answer dicts in prompt order]}; each target is loaded, used and dropped in turn."""
    table: dict[str, list[dict[str, Any]]] = {}
    for load in targets:
        target = load()
        answers = generate_batch(
            target.model,
            list(prompts),
            tokenizer=target.tokenizer,
            system=target.system,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            on_batch=on_batch,
        )
        label = target.label
        while label in table:  # two runs of one method from folders with the same name
            label += "'"
        table[label] = [a.to_dict() for a in answers]
        del target  # keep one model in memory at a time
    return table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>") or "(empty)"


def render_markdown(
    prompts: Sequence[str], table: dict[str, list[dict[str, Any]]], facts: list[dict[str, Any]]
) -> str:
    """compare.md: the answer table, the trainable-parameter table and the loss plot."""
    labels = list(table)
    lines = ["# fa_adapt comparison", "", "## Answers", ""]
    lines += ["| prompt | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for i, prompt in enumerate(prompts):
        cells = []
        for label in labels:
            a = table[label][i]
            cells.append(_cell(a["answer"]) + ("" if a["stopped"] else " …"))
        lines.append(f"| {_cell(prompt)} | " + " | ".join(cells) + " |")
    lines += ["", "… = stopped by the token limit, not by `<|im_end|>`.", ""]
    if facts:
        lines += [
            "## Trainable parameters",
            "",
            "| method | run | trainable | total | % | final validation loss |",
        ]
        lines.append("|---|---|---:|---:|---:|---:|")
        for f in facts:
            loss = f["final_eval_loss"]
            lines.append(
                f"| {f['method']} | {f['run']} | {f['trainable_params'] or 0:,} | {f['total_params'] or 0:,} | "
                f"{(f['trainable_percent'] or 0):.4f} | {'' if loss is None else f'{loss:.4f}'} |"
            )
        lines += ["", "![loss curves](loss_compare.png)", ""]
    return "\n".join(lines)


def write_comparison(
    output: str | Path,
    prompts: Sequence[str],
    table: dict[str, list[dict[str, Any]]],
    run_dirs: Sequence[str | Path],
) -> list[Path]:
    """Write compare.json, compare.md and (with runs) loss_compare.png into `output`; returns the paths."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    facts = [run_facts(r) for r in run_dirs]
    written = [
        write_json(
            out / "compare.json",
            {
                "prompts": list(prompts),
                "answers": table,
                "runs": [{k: v for k, v in f.items() if k not in ("train_loss", "eval_loss")} for f in facts],
            },
        ),
        write_text(out / "compare.md", render_markdown(prompts, table, facts)),
    ]
    if facts:
        curves = {}
        for f in facts:
            name = (
                f["method"]
                if sum(g["method"] == f["method"] for g in facts) == 1
                else f"{f['method']} {Path(f['run']).name}"
            )
            curves[f"{name} train"] = [tuple(p) for p in f["train_loss"]]
            curves[f"{name} validation"] = [tuple(p) for p in f["eval_loss"]]
        written.append(plot_curves(out / "loss_compare.png", curves, title="fa_adapt: loss per method"))
    return written


def compare(
    run_dirs: Sequence[str | Path],
    prompts: Sequence[str],
    output: str | Path,
    with_base: bool = True,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 4,
    on_batch: Callable[[int], None] | None = None,
    device: str = "auto",
    dtype: str = "auto",
) -> tuple[dict[str, list[dict[str, Any]]], list[Path]]:
    """Answer `prompts` with the base model (of the first run) and every run; write the comparison."""
    from fa_adapt.generation import load_target

    if not run_dirs and not with_base:
        raise UserError("compare: give at least one RUN folder, or --base")
    for r in run_dirs:
        run_facts(r)  # fail on a bad folder before loading any model
    loaders: list[Callable[[], Target]] = []
    if with_base:
        loaders.append(
            lambda: (
                load_target(str(run_dirs[0]), base=True, device=device, dtype=dtype)
                if run_dirs
                else load_target(BASE, device=device, dtype=dtype)
            )
        )
    loaders += [lambda r=r: load_target(str(r), device=device, dtype=dtype) for r in run_dirs]
    table = answer_table(
        loaders, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, on_batch=on_batch
    )
    written = write_comparison(output, prompts, table, run_dirs)
    settings = {
        "command": "compare", "runs": [str(r) for r in run_dirs], "with_base": with_base,
        "prompts": list(prompts), "max_new_tokens": max_new_tokens, "batch_size": batch_size,
        **dtype_record(device, dtype),
    }  # fmt: skip
    return table, [*written, write_json(Path(output) / "config.json", settings)]
