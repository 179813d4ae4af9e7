"""Child process for the fault-injection test: train a tiny run, then SIGKILL itself at the N-th line
executed inside the final write of the run folder (`fa_adapt.runs.write_run` or
`capkit.runs.save_run`, counting only lines of adapt's own files, so the points are the same in
every run). N = 0 never kills and prints how many such lines the write executed.

    python kill_during_write.py {fa_adapt|capkit} KILL_AT 'SETTINGS (a Python dict literal)'
"""

from __future__ import annotations

import ast
import os
import signal
import sys
from pathlib import Path

kind, kill_at, settings = sys.argv[1], int(sys.argv[2]), ast.literal_eval(sys.argv[3])
OURS = tuple(str(Path(__file__).resolve().parents[1] / "src" / p) for p in ("adapt", "fa_adapt", "capkit"))
lines = 0


def tracer(frame, event, arg):
    global lines
    if not frame.f_code.co_filename.startswith(OURS):
        return None  # do not trace into third-party code: its line counts vary between versions
    if event == "line":
        lines += 1
        if lines == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return tracer


def traced(write):
    def wrapper(*args, **kwargs):
        sys.settrace(tracer)
        try:
            return write(*args, **kwargs)
        finally:
            sys.settrace(None)

    return wrapper


if kind == "fa_adapt":
    import fa_adapt.runs
    from fa_adapt import finetune

    fa_adapt.runs.write_run = traced(fa_adapt.runs.write_run)
    finetune(**settings)
else:
    import capkit.runs
    from capkit.training import TrainConfig, train

    capkit.runs.save_run = traced(capkit.runs.save_run)
    train(TrainConfig(**settings))
print(lines)
