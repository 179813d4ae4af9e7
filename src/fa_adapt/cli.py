"""`adapt` commands of fa_adapt. Each parses its flags and calls one library function.

`finetune`'s flags are generated from `fa_adapt.config.FinetuneConfig` and the registered methods'
settings; `generate`'s and `chat`'s generation flags from `fa_adapt.generation.GenerationConfig`.
Heavy imports happen inside the commands, so `adapt --help` stays fast.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from adapt.commands import command
from adapt.settings import build_command, given, settings_from

_DEVICE = Annotated[
    str, typer.Option(help="Where to run: auto (this process's GPU, else the CPU), cpu, cuda, cuda:N.")
]
_DTYPE = Annotated[
    str,
    typer.Option(
        "--dtype",
        "--compute-dtype",
        help="Compute dtype: auto (bf16 on GPUs and CPUs with avx512_bf16/amx_bf16, else fp32), fp32, bf16.",
    ),
]
_RUN_HELP = "Run folder from `adapt finetune`, or `base` for the embedded base model (Gemma 3 270M, 4-bit)."


def _param(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _switch(name: str, flag: str, help: str) -> inspect.Parameter:
    """An on/off flag, off by default."""
    return _param(name, Annotated[bool, typer.Option(flag, help=help)], False)


def finetune_command(
    config: Path | None = None, dry_run: bool = False, json_out: bool = False, **flags: Any
) -> None:
    """Fine-tune and write a run folder; prints its path on stdout (or, with --dry-run, the table)."""
    from adapt.settings import read_yaml_settings

    settings = read_yaml_settings(config) if config else {}
    settings.update(given(flags))
    if dry_run:
        from fa_adapt.dry_run import dry_run as parameter_table

        parameter_table(settings, as_json=json_out)
        return
    from fa_adapt.training import finetune

    typer.echo(str(finetune(**settings)))


def _generation(flags: dict[str, Any]) -> Any:
    from fa_adapt.generation import GenerationConfig

    return GenerationConfig(**settings_from(GenerationConfig, given(flags)))


def generate_command(
    run: str,
    prompt: str,
    system: str | None,
    seed: int,
    base: bool,
    json_out: bool,
    device: str,
    dtype: str,
    **flags: Any,
) -> None:
    """Answer one prompt; the answer streams to stdout (logs go to stderr)."""
    from fa_adapt.terminal import answer_prompt

    settings = _generation(flags)
    answer_prompt(
        run,
        prompt,
        settings,
        system=system,
        base=base,
        seed=seed,
        as_json=json_out,
        device=device,
        dtype=dtype,
    )


def chat_command(
    run: str, system: str | None, rtl: str, base: bool, device: str, dtype: str, **flags: Any
) -> None:
    """Interactive multi-turn chat (history kept; /reset clears it, /exit quits)."""
    from fa_adapt.terminal import chat

    chat(run, _generation(flags), system=system, rtl=rtl, base=base, device=device, dtype=dtype)


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
    device: _DEVICE = "auto",
    dtype: _DTYPE = "auto",
) -> None:
    """Every prompt through the base model and each run, side by side; parameter table; loss plot."""
    from fa_adapt.terminal import compare_runs

    compare_runs(runs or [], prompts, output, base, max_new_tokens, batch_size, device, dtype)


def evaluate_command(
    run: Annotated[str, typer.Argument(help=_RUN_HELP)],
    data: Annotated[
        Path | None, typer.Option(help="Held-out conversations (default: the packaged 110 Persian ones).")
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
    device: _DEVICE = "auto",
    dtype: _DTYPE = "auto",
    chrf: Annotated[
        bool,
        typer.Option(
            "--chrf/--no-chrf",
            help="Also answer each held-out question and score the answers against the reference "
            "answers (chrF, 0-100).",
        ),
    ] = True,
) -> None:
    """Held-out loss/perplexity and chrF, and answer metrics on --prompts; eval.json."""
    from fa_adapt.terminal import evaluate_run

    evaluate_run(run, data, prompts, base, output, max_new_tokens, batch_size, json_out, device, dtype, chrf)


def export_command(
    run: Annotated[str, typer.Argument(help="A lora or freeze run folder from `adapt finetune`.")],
    output: Annotated[
        Path | None, typer.Option(help="Folder for the merged model (default RUN-merged).")
    ] = None,
    dtype: Annotated[str, typer.Option(help="Saved weight type: bfloat16, float16 or float32.")] = "bfloat16",
    device: _DEVICE = "auto",
) -> None:
    """Merge a run into the unquantized base model and save it (loads with transformers alone)."""
    from fa_adapt.terminal import export

    export(run, output, dtype, device)


_CONFIG = _param(
    "config",
    Annotated[Path | None, typer.Option(help="YAML file giving any of these flags; flags override it.")],
    None,
)
_SYSTEM = _param("system", Annotated[str | None, typer.Option(help="Optional system message.")], None)
_RUN = _param("run", Annotated[str, typer.Argument(help=_RUN_HELP)])
_BASE = _switch("base", "--base", "Use the run's base model instead.")
_DEVICE_PARAM = _param("device", _DEVICE, "auto")
_DTYPE_PARAM = _param("dtype", _DTYPE, "auto")


def _finetune() -> tuple[Any, dict[str, Any]]:
    from fa_adapt.config import FinetuneConfig
    from fa_adapt.methods import settings_classes

    dry_run = _switch(
        "dry_run",
        "--dry-run",
        "Only print each method's trainable parameters, from the model's config on the meta device "
        "(no weights; --method all for every method; --model gemma-2-2b works offline).",
    )
    as_json = _switch("json_out", "--json", "With --dry-run: the table as JSON on stdout.")
    return build_command(
        finetune_command, FinetuneConfig, *settings_classes(), after=[_CONFIG, dry_run, as_json]
    )


def _generate() -> tuple[Any, dict[str, Any]]:
    from fa_adapt.generation import GenerationConfig

    prompt = _param("prompt", Annotated[str, typer.Argument(help="The user message.")])
    seed = _param("seed", Annotated[int, typer.Option(help="Random seed for sampling.")], 0)
    as_json = _switch(
        "json_out", "--json", 'Print {"prompt","answer","stopped","tokens"} instead of streaming.'
    )
    return build_command(
        generate_command,
        GenerationConfig,
        before=[_RUN, prompt, _SYSTEM],
        after=[seed, _BASE, as_json, _DEVICE_PARAM, _DTYPE_PARAM],
    )


def _chat() -> tuple[Any, dict[str, Any]]:
    from fa_adapt.generation import GenerationConfig

    rtl = _param(
        "rtl",
        Annotated[
            str,
            typer.Option(
                help="Right-to-left display: terminal (it does bidi itself), visual (reorder here), off."
            ),
        ],
        "terminal",
    )
    return build_command(
        chat_command,
        GenerationConfig,
        before=[_RUN, _SYSTEM],
        after=[rtl, _BASE, _DEVICE_PARAM, _DTYPE_PARAM],
    )


def register(app: typer.Typer) -> None:
    """Add this package's commands to the root `adapt` app."""
    fn, kw = _finetune()
    command(app, fn, name="finetune", help="Fine-tune a 4-bit Gemma on Persian chat data.", **kw)
    fn, kw = _generate()
    command(app, fn, name="generate", help="Answer one prompt with a run or the base model (streams).", **kw)
    fn, kw = _chat()
    command(app, fn, name="chat", help="Interactive multi-turn chat with a run or the base model.", **kw)
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
