"""`adapt serve`: its flags are `ServeConfig`'s and `GenerationConfig`'s fields; it parses them and
calls `adapt.serving.serve`. Nothing here imports torch or FastAPI, so `adapt --help` stays fast."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer

from adapt.commands import command
from adapt.settings import build_command, given, settings_from

_RUN_HELP = "fa_adapt run folder, `adapt export` folder, or `base` (the embedded Gemma 3 270M)."


def serve_command(run: str, **flags: Any) -> None:
    """Serve RUN and a captioner over an OpenAI-compatible HTTP API and a web page, until Ctrl-C."""
    from adapt.serving import serve
    from adapt.serving.config import ServeConfig
    from fa_adapt.generation import GenerationConfig

    values = given(flags)
    generation = GenerationConfig(**settings_from(GenerationConfig, values, ignore=_names(ServeConfig)))
    settings = settings_from(ServeConfig, values, ignore=_names(GenerationConfig))
    serve(ServeConfig(run=run, generation=generation, **settings))


def _names(cls: type) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(cls)}


def register(app: typer.Typer) -> None:
    """Add `serve` to the root `adapt` app."""
    from adapt.serving.config import ServeConfig
    from fa_adapt.generation import GenerationConfig

    run = inspect.Parameter(
        "run", inspect.Parameter.KEYWORD_ONLY, default="base",
        annotation=Annotated[str, typer.Argument(help=_RUN_HELP)],
    )  # fmt: skip
    fn, kw = build_command(serve_command, ServeConfig, GenerationConfig, before=[run])
    command(
        app, fn, name="serve", help="Serve a run and a captioner: OpenAI-compatible API and a web page.", **kw
    )
