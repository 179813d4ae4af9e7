"""What fa_adapt's commands show in a terminal: streamed answers, the chat loop, result tables.

Results go to stdout (an answer, a table, JSON); status, progress and file paths to stderr
(`adapt.console`), so a command's output can be piped. Each function here is one command's whole
behaviour; `fa_adapt.cli` only parses the flags and calls it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from adapt.console import new_progress, progress, stderr_console
from fa_adapt.generation import GenerationConfig, as_messages, generate, load_target


def answer_prompt(
    run: str,
    prompt: str,
    settings: GenerationConfig,
    system: str | None = None,
    base: bool = False,
    seed: int = 0,
    as_json: bool = False,
    device: str = "auto",
    dtype: str = "auto",
) -> None:
    """`adapt generate`: stream one answer to stdout and its speed to stderr (or print JSON)."""
    import torch

    as_messages(prompt)  # an empty prompt is refused before the model loads
    err = stderr_console()
    with err.status(f"loading {run}{' (base model)' if base else ''}…"):
        target = load_target(run, base=base, device=device, dtype=dtype)
    torch.manual_seed(seed)

    def emit(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    answer = generate(
        target.model, prompt, tokenizer=target.tokenizer, system=target.system if system is None else system,
        stream=None if as_json else emit, **vars(settings),
    )  # fmt: skip
    if as_json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False))
        return
    sys.stdout.write("\n")
    why = "stopped at <|im_end|>" if answer.stopped else f"hit --max-new-tokens {settings.max_new_tokens}"
    speed = answer.tokens / max(answer.seconds, 1e-9)
    err.print(f"[dim]{answer.tokens} tokens, {why}, {speed:.1f} tokens/s[/dim]")


def chat(
    run: str,
    settings: GenerationConfig,
    system: str | None,
    rtl: str,
    base: bool,
    device: str = "auto",
    dtype: str = "auto",
) -> None:
    """`adapt chat`: load, then the interactive loop (`fa_adapt.chat.run_chat`)."""
    from adapt.runio import check_choice
    from fa_adapt.chat import RTL_MODES, run_chat

    check_choice("--rtl", rtl, RTL_MODES)
    with stderr_console().status(f"loading {run}…"):
        target = load_target(run, base=base, device=device, dtype=dtype)
    run_chat(target, system=system, rtl=rtl, **vars(settings))


def _check_answering(batch_size: int, max_new_tokens: int) -> None:
    """compare's and evaluate's --batch-size and --max-new-tokens, said before any model loads."""
    from adapt.runio import check_positive
    from fa_adapt.generation import check_generation_flags

    check_positive("--batch-size", batch_size)
    check_generation_flags(max_new_tokens)


def compare_runs(
    runs: list[str],
    prompts: Path | None,
    output: Path,
    with_base: bool,
    max_new_tokens: int,
    batch_size: int,
    device: str = "auto",
    dtype: str = "auto",
) -> None:
    """`adapt compare`: every prompt through the base model and each run; tables on stdout."""
    from rich.console import Console
    from rich.table import Table

    from fa_adapt.compare import compare, default_prompts_path, run_facts
    from fa_adapt.evaluation import read_prompts

    _check_answering(batch_size, max_new_tokens)
    prompt_list = read_prompts(prompts or default_prompts_path())
    with new_progress() as bar:
        task = bar.add_task("answering", total=len(prompt_list) * (len(runs) + int(with_base)))
        table, written = compare(
            runs, prompt_list, output, with_base=with_base, max_new_tokens=max_new_tokens,
            batch_size=batch_size, on_batch=lambda n: bar.advance(task, n), device=device, dtype=dtype,
        )  # fmt: skip
    answers = Table(title="Answers", show_lines=True)
    for label in ["prompt", *table]:
        answers.add_column(label, justify="right")
    for i, p in enumerate(prompt_list):
        answers.add_row(p, *[t[i]["answer"] + ("" if t[i]["stopped"] else " …") for t in table.values()])
    out = Console()
    out.print(answers)
    if runs:
        params = Table(title="Trainable parameters")
        for col in ("method", "run", "trainable", "%"):
            params.add_column(col, justify="left" if col in ("method", "run") else "right")
        for f in map(run_facts, runs):
            params.add_row(
                f["method"], f["run"], f"{f['trainable_params'] or 0:,}", f"{f['trainable_percent'] or 0:.4f}"
            )
        out.print(params)
    for path in written:
        print(path, file=sys.stderr)


def evaluate_run(
    run: str,
    data: Path | None,
    prompts: Path | None,
    with_base: bool,
    output: Path | None,
    max_new_tokens: int,
    batch_size: int,
    as_json: bool,
    device: str = "auto",
    dtype: str = "auto",
    chrf: bool = True,
) -> None:
    """`adapt evaluate`: held-out loss and answer metrics, eval.json, a table (or JSON) on stdout."""
    from rich.console import Console

    from fa_adapt.evaluation import default_heldout_path, read_prompts, report_table, run_evaluation

    _check_answering(batch_size, max_new_tokens)
    prompt_list = read_prompts(prompts) if prompts else None
    target_out = output or (Path(run) / "eval.json" if run != "base" else Path("eval.json"))
    report = run_evaluation(
        run, data or default_heldout_path(), prompt_list, with_base=with_base, output=target_out,
        max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress, device=device, dtype=dtype, chrf=chrf,
    )  # fmt: skip
    if as_json:
        shown = {k: report[k] for k in ("run", "base") if k in report}
        print(json.dumps(shown, ensure_ascii=False, indent=2))
    else:
        Console().print(report_table(report))
    print(target_out, file=sys.stderr)


def export(run: str, output: Path | None, dtype: str, device: str = "auto") -> None:
    """`adapt export`: merge, save, print the folder (default RUN-merged)."""
    from fa_adapt.export import export_run

    target = output or Path(f"{Path(run)}-merged")  # Path drops a trailing slash
    with stderr_console().status(f"merging {run} into the unquantized base model…"):
        written = export_run(run, target, dtype=dtype, device=device)
    print(written)
