"""Run-folder helpers shared by fa_adapt and capkit.

Every file a run writes goes through `atomic_path`: it is written to a temporary file in the
same folder and renamed over the target only when complete, so a kill at any moment leaves
either the old good file or the new good file, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from adapt.errors import UserError

# mkstemp creates files readable by the owner only; a run's outputs get the modes any normal
# write would give them (0666 less the umask), read once here because reading it means setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK
STAGING_PREFIX = ".staging-"  # staging_folder's temporary folders


def temporary_prefix(name: str) -> str:
    """How `atomic_path` names the temporary file it writes `name` through."""
    return f".{name}."


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`, else removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=temporary_prefix(target.name), suffix=suffix or target.suffix, dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _FILE_MODE)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def staging_folder(parent: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary folder inside `parent` to build a multi-file folder in (`save_pretrained`) before
    `swap_in` renames it into place; deleted on exit with whatever it still holds."""
    root = Path(parent)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def swap_in(staged: Path, target: Path) -> None:
    """Replace folder `target` by the complete folder `staged` (built inside a `staging_folder`) with
    renames only: the old one is moved into the staging folder, which deletes it.

    safetensors writes its files owner-only (0600); the staged tree first gets the modes a plain
    `mkdir` and write would have given it.
    """
    for folder, _, files in os.walk(staged):
        os.chmod(folder, 0o777 & ~_UMASK)
        for name in files:
            os.chmod(os.path.join(folder, name), _FILE_MODE)
    if target.exists():
        os.replace(target, staged.parent / (target.name + "-old"))
    os.replace(staged, target)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write `obj` as pretty UTF-8 JSON (Persian stays readable) to `path` atomically."""
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, turning a missing or malformed file into a `UserError` naming it."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: file not found")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{p}: not valid JSON ({err})") from None


def plot_curves(
    path: str | os.PathLike[str],
    curves: Mapping[str, Sequence[tuple[float, float]]],
    title: str,
    xlabel: str = "step",
    ylabel: str = "loss",
) -> Path:
    """Draw named (x, y) curves on one set of axes and save them as a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, points in curves.items():
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if any(curves.values()):
        ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


MAX_INTEGER = 2**31 - 1  # steps, sizes and seeds beyond it are mistakes (and overflow torch's int32 paths)


def as_number(flag: str, value: Any, integer: bool = False) -> int | float | None:
    """`value` as a finite number (an int when `integer`), or a `UserError` naming `flag`.

    YAML and the API hand over strings ("1e-3" is a string to YAML 1.1), lists and NaN; each gets
    a one-line error here rather than a traceback deep inside torch.
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise UserError(f"{flag} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{flag} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise UserError(f"{flag} must be a finite number, got {value}")
    if integer:
        if value != int(value):
            raise UserError(f"{flag} must be a whole number, got {value}")
        if abs(value) > MAX_INTEGER:
            raise UserError(f"{flag} is too large ({value:g}); at most {MAX_INTEGER}")
        return int(value)
    return value


def check_positive(flag: str, value: float | None, allow_zero: bool = False) -> None:
    """Raise a `UserError` naming `flag` unless `value` is a finite positive number (or zero when allowed)."""
    if value is None:
        return
    value = as_number(flag, value)
    if value < 0 or (value == 0 and not allow_zero):
        bound = "0 or more" if allow_zero else "greater than 0"
        raise UserError(f"{flag} must be {bound}, got {value}")


def check_choice(flag: str, value: str, choices: Sequence[str]) -> None:
    """Raise a `UserError` naming `flag` and listing the valid names unless `value` is one of them."""
    if value not in choices:
        raise UserError(f"{flag}: unknown value {value!r}; choose one of: {', '.join(sorted(choices))}")
