"""Registering package commands on a Typer app: user errors become one line and exit code 2.

Kept apart from `adapt.cli` (which imports both packages' CLIs) so that `fa_adapt.cli` and
`capkit.cli` can import it without an import circle.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer

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
