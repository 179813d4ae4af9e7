"""`adapt` commands of fa_adapt: thin wrappers over the library API (filled in per issue)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adapt.commands import command


def register(app: typer.Typer) -> None:
    """Add this package's commands to the root `adapt` app."""
    command(
        app,
        finetune_command,
        name="finetune",
        help="Fine-tune a 4-bit Gemma on Persian chat data (prompt / lora / freeze).",
    )
    command(
        app,
        generate_command,
        name="generate",
        help="Answer one prompt with a run or the base model (streams).",
    )
    command(app, chat_command, name="chat", help="Interactive multi-turn chat with a run or the base model.")
    command(
        app, compare_command, name="compare", help="Base model and runs side by side on the same prompts."
    )
    command(
        app,
        evaluate_command,
        name="evaluate",
        help="Held-out loss/perplexity and answer metrics, vs the base.",
    )
    command(
        app,
        export_command,
        name="export",
        help="Write a lora/freeze run as one merged transformers model (bf16).",
    )


def _load_yaml(path: Path) -> dict:
    import yaml

    from adapt.errors import UserError

    if not path.is_file():
        raise UserError(f"--config {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"--config {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of flag names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def finetune_command(
    method: Annotated[
        str | None, typer.Option(help="Strategy: prompt, lora or freeze (default lora).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model id or folder (default: embedded Gemma 3 270M).")
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Chat data: .jsonl/.json/.parquet/.csv or a hub dataset name.")
    ] = None,
    output: Annotated[
        str | None, typer.Option(help="Run folder to write (default runs/fa-<method>-<time>).")
    ] = None,
    epochs: Annotated[
        float | None,
        typer.Option(help="Training epochs (default 1; the source used lora 5, prompt 10, freeze 3)."),
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Stop after this many optimizer steps (overrides epochs).")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate (default: lora 1e-3, prompt 3e-2, freeze 5e-5).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Rows per device batch.")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Gradient accumulation steps.")] = None,
    max_length: Annotated[
        int | None, typer.Option(help="Token limit per conversation (longer: truncated or skipped).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    target_modules: Annotated[
        str | None, typer.Option(help="LoRA target modules, comma separated (default q_proj,v_proj).")
    ] = None,
    quantization: Annotated[str | None, typer.Option(help="nf4 (4-bit) or none.")] = None,
    gradient_checkpointing: Annotated[
        bool | None, typer.Option("--gradient-checkpointing", help="Trade compute for memory.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML file giving any of these flags; flags override it.")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the stopped run in --output from its newest checkpoint (its settings are kept; flags given override them).",
        ),
    ] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Stop on the first bad data row instead of skipping it.")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace a previous fa_adapt run in --output (never other files; without it such a folder is refused).",
        ),
    ] = False,
) -> None:
    """Fine-tune and write a run folder; prints its path on stdout."""
    from fa_adapt.training import finetune

    settings = _load_yaml(config) if config else {}
    flags = dict(
        method=method,
        model=model,
        data=data,
        output=output,
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_length=max_length,
        seed=seed,
        target_modules=target_modules,
        quantization=quantization,
        gradient_checkpointing=gradient_checkpointing,
    )
    settings.update({k: v for k, v in flags.items() if v is not None})
    if resume:
        settings["resume"] = True
    if strict:
        settings["strict"] = True
    if overwrite:
        settings["overwrite"] = True
    for extra in ("strategy", "chatml_token_ids"):  # keys a run's own config.json carries
        settings.pop(extra, None)
    from fa_adapt.callbacks import Interrupted

    try:
        out = finetune(**settings)
    except Interrupted as stop:  # a clean stop, not an error: say how to go on
        typer.secho(str(stop), err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(stop.exit_code) from None
    typer.echo(str(out))


# ---- generation, chat, comparison, evaluation (issue 4) -------------------------------------------

_RUN_HELP = "Run folder from `adapt finetune`, or `base` for the embedded base model (Gemma 3 270M, 4-bit)."


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _progress(total: int, description: str):
    """A Rich progress bar on stderr (stdout stays clean for results)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_stderr_console(),
        transient=True,
    )
    task = progress.add_task(description, total=total)
    return progress, (lambda n: progress.advance(task, n))


def generate_command(
    run: Annotated[str, typer.Argument(help=_RUN_HELP)],
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    system: Annotated[str | None, typer.Option(help="Optional system message.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 200,
    no_repeat_ngram: Annotated[int, typer.Option(help="Never repeat an n-gram of the answer (0 = off).")] = 3,
    temperature: Annotated[float, typer.Option(help="0 = greedy; above 0 samples.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (with --temperature > 0).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed for sampling.")] = 0,
    base: Annotated[bool, typer.Option("--base", help="Answer with the run's base model instead.")] = False,
    json_out: Annotated[
        bool,
        typer.Option("--json", help='Print {"prompt","answer","stopped","tokens"} instead of streaming.'),
    ] = False,
) -> None:
    """Answer one prompt; the answer streams to stdout (logs go to stderr)."""
    import json
    import sys

    import torch

    from fa_adapt.generation import as_messages, check_generation_flags, generate, load_target

    check_generation_flags(max_new_tokens, no_repeat_ngram, temperature, top_p)
    as_messages(prompt)  # an empty prompt is refused before the model loads
    err = _stderr_console()
    with err.status(f"loading {run}{' (base model)' if base else ''}…"):
        target = load_target(run, base=base)
    torch.manual_seed(seed)

    def emit(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    answer = generate(
        target.model,
        prompt,
        tokenizer=target.tokenizer,
        system=system,
        max_new_tokens=max_new_tokens,
        no_repeat_ngram=no_repeat_ngram,
        temperature=temperature,
        top_p=top_p,
        stream=None if json_out else emit,
    )
    if json_out:
        typer.echo(json.dumps(answer.to_dict(), ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        why = "stopped at <|im_end|>" if answer.stopped else f"hit --max-new-tokens {max_new_tokens}"
        err.print(
            f"[dim]{answer.tokens} tokens, {why}, {answer.tokens / max(answer.seconds, 1e-9):.1f} tokens/s[/dim]"
        )


def chat_command(
    run: Annotated[str, typer.Argument(help=_RUN_HELP)],
    system: Annotated[str | None, typer.Option(help="Optional system message for the whole chat.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 200,
    no_repeat_ngram: Annotated[int, typer.Option(help="Never repeat an n-gram of an answer (0 = off).")] = 3,
    temperature: Annotated[float, typer.Option(help="0 = greedy; above 0 samples.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (with --temperature > 0).")] = 1.0,
    base: Annotated[bool, typer.Option("--base", help="Chat with the run's base model instead.")] = False,
    rtl: Annotated[
        str,
        typer.Option(
            help="Right-to-left display: terminal (it does bidi itself), visual (reorder here), off."
        ),
    ] = "terminal",
) -> None:
    """Interactive multi-turn chat (history kept; /reset clears it, /exit quits)."""
    from adapt.runio import check_choice
    from fa_adapt.chat import run_chat
    from fa_adapt.generation import check_generation_flags, load_target

    check_choice("--rtl", rtl, ("terminal", "visual", "off"))
    check_generation_flags(max_new_tokens, no_repeat_ngram, temperature, top_p)
    with _stderr_console().status(f"loading {run}…"):
        target = load_target(run, base=base)
    run_chat(
        target,
        system=system,
        rtl=rtl,
        max_new_tokens=max_new_tokens,
        no_repeat_ngram=no_repeat_ngram,
        temperature=temperature,
        top_p=top_p,
    )


def compare_command(
    runs: Annotated[list[str] | None, typer.Argument(help="Run folders from `adapt finetune`.")] = None,
    base: Annotated[bool, typer.Option("--base/--no-base", help="Include the base model.")] = True,
    prompts: Annotated[
        Path | None, typer.Option(help="Prompts, one per line (default: the source's six Persian prompts).")
    ] = None,
    output: Annotated[
        Path, typer.Option(help="Folder for compare.md, compare.json, loss_compare.png.")
    ] = Path("compare"),
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 200,
    batch_size: Annotated[int, typer.Option(help="Prompts generated together (left padding).")] = 6,
) -> None:
    """Every prompt through the base model and each run, side by side; parameter table; loss plot."""
    from rich.console import Console
    from rich.table import Table

    from adapt.runio import check_positive
    from fa_adapt.compare import compare, default_prompts_path, run_facts
    from fa_adapt.evaluation import read_prompts
    from fa_adapt.generation import check_generation_flags

    check_positive("--batch-size", batch_size)
    check_generation_flags(max_new_tokens)
    prompt_list = read_prompts(prompts or default_prompts_path())
    run_list = runs or []
    n_models = len(run_list) + int(base)
    progress, advance = _progress(len(prompt_list) * n_models, "answering")
    with progress:
        table, written = compare(
            run_list,
            prompt_list,
            output,
            with_base=base,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            on_batch=advance,
        )
    out = Console()
    answers = Table(title="Answers", show_lines=True)
    answers.add_column("prompt", justify="right")
    for label in table:
        answers.add_column(label, justify="right")
    for i, p in enumerate(prompt_list):
        answers.add_row(p, *[t[i]["answer"] + ("" if t[i]["stopped"] else " …") for t in table.values()])
    out.print(answers)
    if run_list:
        params = Table(title="Trainable parameters")
        for col in ("method", "run", "trainable", "%"):
            params.add_column(col, justify="left" if col in ("method", "run") else "right")
        for f in (run_facts(r) for r in run_list):
            params.add_row(
                f["method"], f["run"], f"{f['trainable_params'] or 0:,}", f"{f['trainable_percent'] or 0:.4f}"
            )
        out.print(params)
    for path in written:
        typer.echo(str(path), err=True)


def evaluate_command(
    run: Annotated[str, typer.Argument(help=_RUN_HELP)],
    data: Annotated[
        Path | None, typer.Option(help="Held-out conversations (default: the packaged 40 Persian ones).")
    ] = None,
    prompts: Annotated[
        Path | None, typer.Option(help="Prompts to answer, one per line (adds answer metrics).")
    ] = None,
    base: Annotated[
        bool, typer.Option("--base", help="Also measure the base model; report changes against it.")
    ] = False,
    output: Annotated[
        Path | None, typer.Option(help="eval.json path (default RUN/eval.json, or ./eval.json).")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 200,
    batch_size: Annotated[int, typer.Option(help="Rows scored / prompts generated together.")] = 4,
    json_out: Annotated[
        bool, typer.Option("--json", help='Print {"run": {...}, "base": {...}} to stdout.')
    ] = False,
) -> None:
    """Held-out loss/perplexity on assistant tokens, and answer metrics on --prompts; eval.json."""
    import json

    from adapt.runio import check_positive
    from fa_adapt.evaluation import default_heldout_path, read_prompts, run_evaluation
    from fa_adapt.generation import check_generation_flags

    check_positive("--batch-size", batch_size)
    check_generation_flags(max_new_tokens)
    data_path = data or default_heldout_path()
    prompt_list = read_prompts(prompts) if prompts else None
    target_out = output or (Path(run) / "eval.json" if run != "base" else Path("eval.json"))
    report = run_evaluation(
        run,
        data_path,
        prompt_list,
        with_base=base,
        output=target_out,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=_progress,
    )
    if json_out:
        typer.echo(
            json.dumps({k: report[k] for k in ("run", "base") if k in report}, ensure_ascii=False, indent=2)
        )
    else:
        from rich.console import Console

        from fa_adapt.evaluation import report_table

        Console().print(report_table(report))
    typer.echo(str(target_out), err=True)


def export_command(
    run: Annotated[str, typer.Argument(help="A lora or freeze run folder from `adapt finetune`.")],
    output: Annotated[
        Path | None, typer.Option(help="Folder for the merged model (default RUN-merged).")
    ] = None,
    dtype: Annotated[str, typer.Option(help="Saved weight type: bfloat16, float16 or float32.")] = "bfloat16",
) -> None:
    """Merge a run into the unquantized base model and save it (loads with transformers alone)."""
    from fa_adapt.export import export_run

    target = output or Path(f"{Path(run)}-merged")  # Path drops a trailing slash
    with _stderr_console().status(f"merging {run} into the unquantized base model…"):
        written = export_run(run, target, dtype=dtype)
    typer.echo(str(written))
