"""Checks shared by the fa_adapt and capkit tests (reached through fixtures in tests/conftest.py):
fault injection (SIGKILL a child, `kill_during_write.py`, at 20 seeded points inside the final write
of its run folder, then check what is left), a clean CLI exit, and a snapshot of files."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from adapt.errors import UserError

CHILD = Path(__file__).with_name("kill_during_write.py")
POINTS = 20


def _child(kind: str, kill_at: int, settings: dict) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(CHILD), kind, str(kill_at), repr(settings)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _kill_points(kind: str, settings: dict) -> list[int]:
    """Run once without a kill: the number of traced lines in the write, then 20 seeded points."""
    done = _child(kind, 0, settings)
    assert done.returncode == 0, done.stderr[-3000:]
    total = int(done.stdout.strip().splitlines()[-1])
    assert total > 3 * POINTS  # enough distinct places to kill at
    return sorted(random.Random(0).sample(range(1, total + 1), POINTS))


def check_kills(kind, settings_for, load, files, unfinished_message, resume) -> tuple[dict, dict]:
    """Kill at each point, load what is left, resume the last unfinished folder; returns the
    resumed and the reference run's metrics."""
    reference = settings_for("reference")
    points = _kill_points(kind, reference)
    outcomes = []
    for point in points:
        settings = settings_for(f"killed-{point}")
        proc = _child(kind, point, settings)
        assert proc.returncode == -signal.SIGKILL, (point, proc.stderr[-2000:])
        out = Path(settings["output"])
        try:
            load(out)
            missing = [f for f in files if not (out / f).exists()]
            assert not missing, (point, f"loads, but {missing} are missing: a mix, not a complete run")
            outcomes.append("complete")
        except UserError as err:
            assert "\n" not in str(err) and unfinished_message in str(err), (point, str(err))
            outcomes.append(out)
    unfinished = [o for o in outcomes if o != "complete"]
    assert unfinished, outcomes  # the early points must leave an unfinished run
    resume(unfinished[-1], settings_for(Path(unfinished[-1]).name))
    load(unfinished[-1])
    got = json.loads((Path(unfinished[-1]) / "metrics.json").read_text())
    want = json.loads((Path(reference["output"]) / "metrics.json").read_text())
    return got, want


def assert_clean_exit(result) -> None:
    """A CliRunner result ended with exit 0, or a clean exit 2 (SystemExit), never a traceback."""
    assert result.exit_code in (0, 2), (result.exit_code, result.output[-2000:])
    assert "Traceback" not in result.output, result.output[-2000:]
    if result.exit_code == 2:
        assert isinstance(result.exception, SystemExit), repr(result.exception)


def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """SHA-256 of every file under `root`, except inside `skip` and feature caches."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not (skip and skip in p.parents) and "cache" not in p.parts
    }
