"""Run the real `adapt` CLI, holding training at one step until a signal has been handled.

Used by the kill-and-resume tests as `python signal_gate.py STEP MARKER adapt-args...`. At the end
of optimizer step STEP it writes MARKER and waits (polling) until the run's own SIGINT/SIGTERM
handler has fired, so the test's signal always lands mid-run however slow the machine is; then
training goes on exactly as it would have, into the real checkpoint-and-stop path.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fa_adapt.callbacks import InterruptCheckpoint

STEP, MARKER = int(sys.argv[1]), Path(sys.argv[2])
WAIT_S = 300.0
_real_on_step_end = InterruptCheckpoint.on_step_end


def _gated_on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
    if state.global_step == STEP:
        MARKER.write_text(str(state.global_step))
        deadline = time.monotonic() + WAIT_S
        while not self.stopped and time.monotonic() < deadline:
            time.sleep(0.01)
    return _real_on_step_end(self, args, state, control, **kwargs)


InterruptCheckpoint.on_step_end = _gated_on_step_end

if __name__ == "__main__":
    from adapt.cli import app

    sys.exit(app(args=sys.argv[3:], prog_name="adapt"))
