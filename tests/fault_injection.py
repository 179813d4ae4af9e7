"""Fault injection shared by the fa_adapt and capkit tests: SIGKILL a child (`kill_during_write.py`)
at 20 seeded points inside the final write of its run folder, then check what is left."""

from __future__ import annotations

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
