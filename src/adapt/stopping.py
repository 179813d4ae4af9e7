"""How a long run stops on a signal, the same in both packages.

SIGINT (Ctrl-C) and SIGTERM (what a job scheduler sends) both stop a run cleanly: what was saved
is kept, and the run ends by raising `Stopped`, whose message says what was kept and the command
that continues it. `adapt.commands` prints that message and exits 130 (SIGINT) or 143 (SIGTERM),
as a shell expects of a process ended by that signal.

A run either stops at once (`raising_signals`: the signal raises `StopSignal` wherever the run is,
capkit's plain loop) or at the next safe point (`stop_signals(handler)`: the handler records the
request and the loop checks it, fa_adapt's Trainer, which then saves a checkpoint first).
"""

from __future__ import annotations

import contextlib
import shlex
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from adapt.errors import UserError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code_of(signum: int | None) -> int:
    """128 + the signal's number, as a shell reports a process ended by it (SIGINT when unknown)."""
    return 128 + int(signum or signal.SIGINT)


class StopSignal(KeyboardInterrupt):
    """A stop signal arrived (a KeyboardInterrupt, so code that handles Ctrl-C handles it too)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signum_of(interrupt: BaseException) -> int:
    """The signal behind a KeyboardInterrupt (a plain one is Ctrl-C)."""
    return getattr(interrupt, "signum", signal.SIGINT)


class Stopped(UserError):
    """A run stopped by a signal after keeping what it had (exit code 128 + signal)."""

    def __init__(self, message: str, signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = int(signum or signal.SIGINT)
        self.exit_code = exit_code_of(self.signum)


@contextlib.contextmanager
def stop_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Route SIGINT and SIGTERM to `handler` for the duration; the old handlers come back after
    (the run may be one call inside a longer program). Only Python's main thread receives signals:
    a run started from another thread leaves them to the program that owns them."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _raise_stop(signum: int, frame: Any) -> None:
    raise StopSignal(signum)


def raising_signals() -> contextlib.AbstractContextManager[None]:
    """SIGINT and SIGTERM raise `StopSignal` where the program is, for the duration."""
    return stop_signals(_raise_stop)


def resume_hint(argv: Sequence[str]) -> str:
    """The shell line that continues a run: `argv` (from `adapt` on), quoted for copying."""
    return shlex.join(list(argv))
