"""The `adapt` command line: one Typer app, commands contributed by fa_adapt and capkit.

Heavy imports (torch, transformers) happen inside the commands, so `adapt --help` stays fast.
Each package's `cli.register(app)` adds its commands through `adapt.commands.command()`, which
turns a `UserError` into a one-line message with exit code 2. The packages import nothing from this
module, so any of the three CLI modules can be imported first.
"""

from __future__ import annotations

import sys

import typer

from adapt import __version__
from adapt.commands import OneLineErrors

app = typer.Typer(
    name="adapt",
    cls=OneLineErrors,
    help="Adapt models on modest hardware: Persian chat fine-tuning (fa_adapt) and image captioning (capkit).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"adapt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Adapt models on modest hardware."""


@app.command("env")
def env(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of one line.")) -> None:
    """Print the library versions and the CPU kind (AVX2, AVX512-BF16, AMX): paste it into a bug report."""
    import json

    from adapt.environment import describe, one_line

    typer.echo(json.dumps(describe(), indent=2) if as_json else one_line())


def _register_all() -> None:
    from adapt import serve_cli
    from capkit import cli as capkit_cli
    from fa_adapt import cli as fa_cli

    fa_cli.register(app)
    capkit_cli.register(app)
    serve_cli.register(app)


_register_all()


def main() -> None:
    """Entry point of the `adapt` console script."""
    from adapt.quiet import quiet_libraries

    quiet_libraries()
    sys.exit(app())


if __name__ == "__main__":
    main()
