"""A run's output folder is the run's own: claimed before anything heavy loads, locked while it runs.

`claim_output` refuses a folder that holds anything but a previous run of the same kind (a user's
files are never overwritten or mixed with run files); `--overwrite` replaces only such a previous
run. `run_lock` takes an exclusive `fcntl` lock on `<folder>/.adapt.lock` (holding the PID), so a
second run into the same folder refuses at once; the kernel drops the lock when its process dies,
so a lock file left by a killed run is stale and simply taken over.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

from adapt.errors import UserError
from adapt.runio import STAGING_PREFIX, temporary_prefix

LOCK_NAME = ".adapt.lock"


def default_run_folder(prefix: str) -> str:
    """Where a run goes when no --output is given: `runs/<prefix>-<date>-<time>`."""
    return str(Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")


def _names(paths: Sequence[Path]) -> str:
    shown = ", ".join(sorted(p.name for p in paths)[:3])
    return shown + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def check_folder_path(folder: Path, flag: str = "--output") -> None:
    """A one-line error unless `folder` is, or can be made, a writable folder. A folder that does
    not exist yet is made and removed again (with any parents made for it): a run that stops on a
    later mistake leaves nothing behind."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder}: is a file, not a folder")
    made = _make_folder(folder, flag)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {folder}: the folder is not writable")
    _remove_empty(made)


def _make_folder(folder: Path, flag: str) -> list[Path]:
    """mkdir -p `folder`; returns the folders it made, deepest first (a `UserError` if it cannot)."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{flag} {folder}: cannot create the folder ({err.strerror or err})") from None
    return missing


def _remove_empty(folders: Sequence[Path]) -> None:
    for made in folders:  # deepest first; stops at the first that is not empty
        try:
            made.rmdir()
        except OSError:
            return


def _written_by_run(name: str, run_names: Collection[str]) -> bool:
    """True for one of `run_names` or a temporary that `atomic_path`/`staging_folder` made for one."""
    return (
        name in run_names
        or name.startswith(STAGING_PREFIX)
        or any(name.startswith(temporary_prefix(n)) for n in run_names)
    )


def claim_output(
    folder: Path,
    kind: str,
    is_run: Callable[[Path], bool],
    run_names: Collection[str],
    overwrite: bool = False,
) -> None:
    """Make `folder` ready for a new run of `kind`, or refuse with a one-line error.

    An empty or new folder is taken. A folder where `is_run(folder)` holds a previous run is
    replaced with `overwrite` (only when every entry in it is one of `run_names`, the files and
    folders such a run writes, or a temporary of `adapt.runio` left by a killed write: a user's
    file beside a run is never deleted) and refused without it. Anything else is refused.
    """
    check_folder_path(folder)
    if not folder.exists():
        return  # made by the run itself (`run_lock`)
    entries = [p for p in folder.iterdir() if p.name != LOCK_NAME]
    if not entries:
        return
    if not is_run(folder):
        raise UserError(
            f"--output {folder} already holds files that are not a {kind} run ({_names(entries)}); "
            "choose another folder"
        )
    foreign = [p for p in entries if not _written_by_run(p.name, run_names)]
    if foreign:
        raise UserError(
            f"--output {folder} holds a {kind} run and other files ({_names(foreign)}); "
            "choose another folder (--overwrite replaces only a run)"
        )
    if not overwrite:
        raise UserError(
            f"--output {folder} already holds a {kind} run; pass --resume to continue it, "
            "--overwrite to replace it, or choose another folder"
        )
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@contextlib.contextmanager
def run_lock(folder: Path, enabled: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on `folder` for the duration (no-op when not `enabled`, e.g. on the
    non-main ranks of a multi-process run, which share the main rank's folder). A folder made for
    the lock is removed again if the run leaves nothing in it."""
    if not enabled:
        yield
        return
    import fcntl

    made = _make_folder(folder, "--output")
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UserError(
            f"--output {folder} is in use by another adapt run (PID {holder}); wait for it to finish "
            "or choose another folder"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        _remove_empty(made)
