"""The console and progress bars of every command: Rich, on stderr, so stdout carries only results
(a caption, an answer, a run folder's path) and can be piped."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


def stderr_console() -> Any:
    """A Rich console on stderr."""
    from rich.console import Console

    return Console(stderr=True)


def say(text: str) -> None:
    """One plain line on stderr, never wrapped or marked up: paths and commands in it stay copyable
    whatever the terminal's width."""
    stderr_console().print(text, markup=False, highlight=False, soft_wrap=True)


def new_progress(*extra_columns: Any, transient: bool = True, remaining: bool = False) -> Any:
    """A Rich `Progress` on stderr: description, bar, done/total, time (left or elapsed), extras."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    clock = TimeRemainingColumn() if remaining else TimeElapsedColumn()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        clock,
        *extra_columns,
        console=stderr_console(),
        transient=transient,
    )


@contextlib.contextmanager
def progress(
    description: str, total: int, enabled: bool = True, transient: bool = True
) -> Iterator[Callable[[int], None]]:
    """A progress bar for the duration (nothing when not `enabled`); yields `advance(n)`."""
    if not enabled:
        yield lambda n: None
        return
    with new_progress(transient=transient) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
