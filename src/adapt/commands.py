"""Registering package commands on a Typer app: user errors become one line and exit code 2.

Kept apart from `adapt.cli` (which imports both packages' CLIs) so that `fa_adapt.cli` and
`capkit.cli` can import it without an import circle. `OneLineErrors` does the same for the errors
Click finds before a command runs.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperGroup

from adapt.errors import UserError
from adapt.stopping import Stopped, exit_code_of, signum_of


def fail(message: str, code: int = 2) -> None:
    """Print `error: message` on stderr and exit with `code`."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def command(target: typer.Typer, fn: Callable[..., Any], name: str | None = None, **kwargs: Any) -> None:
    """Register `fn` as a command of `target`: user errors shown as one line (exit 2), a stopped run
    as its message (exit 128 + signal, `adapt.stopping`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except Stopped as stop:  # a clean stop, not an error: what was kept and how to go on
            typer.secho(str(stop), err=True, fg=typer.colors.YELLOW)
            raise typer.Exit(stop.exit_code) from None
        except UserError as err:
            fail(str(err), err.exit_code)
        except KeyboardInterrupt as interrupt:  # Ctrl-C outside a run (loading, generating)
            typer.secho("interrupted", err=True, fg=typer.colors.YELLOW)
            raise typer.Exit(exit_code_of(signum_of(interrupt))) from None

    target.command(name=name, **kwargs)(wrapper)


def _click_exceptions() -> Any:
    """The exception classes of the Click that Typer runs on (Typer 0.29 vendors its own copy)."""
    try:
        from typer._click import exceptions
    except ImportError:  # a Typer that uses the click package
        from click import exceptions
    return exceptions


def _one_line(error: Any) -> str:
    """Click's usage error as one line that names the flag, e.g. `--epochs: 'abc' is not a valid number`."""
    click = _click_exceptions()

    param = getattr(error, "param", None)
    if isinstance(error, click.BadParameter) and not isinstance(error, click.MissingParameter) and param:
        name = (
            param.opts[0] if getattr(param, "param_type_name", "") == "option" else param.human_readable_name
        )
        text = f"{name}: {error.message}"
    else:
        text = error.format_message()
    text = " ".join(text.split())
    ctx = getattr(error, "ctx", None)
    return f"{text} (see: {ctx.command_path} --help)" if ctx is not None else text


class OneLineErrors(TyperGroup):
    """The root group: a flag Click cannot parse (a wrong type, an unknown option or choice, a
    missing argument) is one line `error: …` with exit 2, like every other mistake, instead of
    Click's usage box. Only the standalone entry (the `adapt` program, CliRunner) is changed."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        click = _click_exceptions()

        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click.NoArgsIsHelpError as help_shown:
            help_shown.show()
            sys.exit(help_shown.exit_code)
        except click.ClickException as error:
            typer.secho(f"error: {_one_line(error)}", err=True, fg=typer.colors.RED)
            sys.exit(error.exit_code)
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)
