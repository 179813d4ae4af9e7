"""Run the real `adapt` CLI, holding `caption-train` inside one epoch until a signal arrives.

Used by the kill-and-resume tests as `python signal_gate.py EPOCH MARKER adapt-args...`. After
the first optimizer step of epoch EPOCH (so the checkpoint of the epoch before is on disk) it
writes MARKER and waits, polling, for the test's SIGINT or SIGTERM. The signal raises
KeyboardInterrupt in that wait, inside the training loop, exactly where it would land mid-epoch
in a real run, however slow the machine is; nothing else of the run is changed.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from adapt import console

EPOCH, MARKER = int(sys.argv[1]), Path(sys.argv[2])
WAIT_S = 300.0  # then training simply goes on, and the test fails on the exit code
_real_progress = console.progress


@contextlib.contextmanager
def _gated_progress(description: str, total: int, enabled: bool = True, transient: bool = True):
    with _real_progress(description, total, enabled, transient) as advance:
        if not description.startswith(f"epoch {EPOCH}/"):
            yield advance
            return
        held = False

        def advance_then_hold(n: int) -> None:
            nonlocal held
            advance(n)
            if not held:
                held = True
                MARKER.write_text(description)
                deadline = time.monotonic() + WAIT_S
                while time.monotonic() < deadline:
                    time.sleep(0.01)

        yield advance_then_hold


console.progress = _gated_progress

if __name__ == "__main__":
    from adapt.cli import app

    sys.exit(app(args=sys.argv[3:], prog_name="adapt"))
