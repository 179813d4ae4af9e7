"""Kill-and-resume with real processes: `adapt caption-train` stopped by SIGINT, then by SIGTERM,
each time resumed with the command it printed, ends exactly where an uninterrupted run with the
same seed ends (trained in the test's own process, to spare a fourth interpreter start).

The stopped runs go through `signal_gate.py`, which holds training just after the first step of
an epoch (the previous epoch's checkpoint is on disk) until the signal comes: the test polls for
the gate's marker file, never sleeps for a guessed time, so it is deterministic under any load.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapt.stopping import Stopped
from capkit.training import TrainConfig, train

GATE = Path(__file__).with_name("signal_gate.py")
TIMEOUT_S = 300  # generous: each process needs ~5 s idle, ~20 s on a loaded 2-core machine
TRAIN_FLAGS = [
    "--decoder", "lstm", "--encoder", "efficientnet_lite0", "--epochs", "3",
    "--batch-size", "8", "--min-count", "1", "--seed", "3",
]  # fmt: skip


class Run:
    """One `adapt` process with its stdout/stderr in files (no pipe can fill up and block it)."""

    started: list[subprocess.Popen] = []

    def __init__(self, argv: list[str], folder: Path, name: str, env: dict, hold_epoch: int | None = None):
        self.marker = folder / f"{name}.held"
        self.stdout, self.stderr = folder / f"{name}.out", folder / f"{name}.err"
        prefix = ["-m", "adapt"] if hold_epoch is None else [str(GATE), str(hold_epoch), str(self.marker)]
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.proc = subprocess.Popen([sys.executable, *prefix, *argv], stdout=out, stderr=err, env=env)
        Run.started.append(self.proc)

    def wait_until_held(self) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not self.marker.is_file():
            if self.proc.poll() is not None:
                pytest.fail(
                    f"exited {self.proc.returncode} before the gate:\n{self.stderr.read_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"the gate was not reached within {TIMEOUT_S} s")
            time.sleep(0.05)

    def finish(self) -> tuple[int, str, str]:
        try:
            code = self.proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return code, self.stdout.read_text(), self.stderr.read_text()


def _stop_and_check(run: Run, sig: signal.Signals, out: Path, kept_epoch: int) -> list[str]:
    """Send `sig` to a held run; check the clean stop; return the resume command it printed."""
    run.wait_until_held()
    assert (out / "checkpoint.pt").is_file()  # the previous epoch's checkpoint, before the signal
    run.proc.send_signal(sig)
    code, stdout, stderr = run.finish()
    assert code == 128 + sig, stderr
    assert "Traceback" not in stdout + stderr
    assert f"stopped; the checkpoint after epoch {kept_epoch} is kept in {out / 'checkpoint.pt'}" in stderr
    checkpoint = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == kept_epoch and len(checkpoint["history"]) == kept_epoch
    assert not (out / "decoder.safetensors").exists()  # the final artifacts only come at the end
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]  # no half-written temp file
    [hint] = [line.strip() for line in stderr.splitlines() if line.strip().startswith("adapt caption-train")]
    argv = shlex.split(hint)
    assert argv[-1] == "--resume" and argv[argv.index("--output") + 1] == str(out)
    return argv[1:]


@pytest.fixture(autouse=True)
def _no_process_left_behind():
    """A failed assertion must not leave a held run waiting for its signal."""
    yield
    while Run.started:
        proc = Run.started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _history(out: Path) -> list[tuple]:
    metrics = json.loads((out / "metrics.json").read_text())
    return [(h["epoch"], h["steps"], h["train_loss"], h["val_loss"]) for h in metrics["history"]]


def test_sigint_then_sigterm_stop_cleanly_and_resume_to_the_uninterrupted_state(
    tiny_data, tmp_path, one_thread
):
    # One feature cache for all runs (in tmp_path, never the user's): fresh and cached features
    # are identical by design, so this also checks the cache does not change results.
    env = {**os.environ, "CAPKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    first = Run(
        ["caption-train", str(tiny_data), *TRAIN_FLAGS, "--output", str(stopped)], tmp_path, "a", env, 2
    )
    # While that process starts, the uninterrupted reference trains here with the same settings.
    reference = TrainConfig(
        data=str(tiny_data), decoder="lstm", encoder="efficientnet_lite0", epochs=3, batch_size=8, min_count=1,
        seed=3, output=str(full), cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    assert train(reference) == full
    resume = _stop_and_check(first, signal.SIGINT, stopped, kept_epoch=1)
    # Every non-default flag is repeated (the default encoder need not be), so the line just works.
    assert resume == [
        "caption-train", str(tiny_data), "--decoder", "lstm", "--epochs", "3", "--batch-size", "8",
        "--seed", "3", "--min-count", "1", "--output", str(stopped), "--resume",
    ]  # fmt: skip

    # The resumed run is stopped in turn, by SIGTERM (what a job scheduler sends), one epoch later.
    second = Run(resume, tmp_path, "b", env, hold_epoch=3)
    resume = _stop_and_check(second, signal.SIGTERM, stopped, kept_epoch=2)
    assert "resuming" in second.stderr.read_text()

    code, stdout, stderr = Run(resume, tmp_path, "c", env).finish()
    assert code == 0, stderr
    assert stdout.strip() == str(stopped)

    want, got = _history(full), _history(stopped)
    assert [h[:2] for h in got] == [h[:2] for h in want] == [(1, 3), (2, 3), (3, 3)]  # epochs, steps
    losses = [loss for h in got for loss in h[2:]]  # train and validation loss per epoch
    assert losses == pytest.approx([loss for h in want for loss in h[2:]], abs=1e-4)
    a, b = load_file(full / "decoder.safetensors"), load_file(stopped / "decoder.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_interrupt_before_the_first_checkpoint_says_nothing_is_kept(
    tiny_data, tmp_path, monkeypatch, one_thread
):
    import contextlib

    from adapt import console

    real_progress = console.progress

    @contextlib.contextmanager
    def interrupted_progress(description, total, enabled=True, transient=True):
        if not description.startswith("epoch "):  # encoding the images goes on as usual
            with real_progress(description, total, enabled, transient) as advance:
                yield advance
            return

        def advance(n):
            raise KeyboardInterrupt  # Ctrl-C during the first epoch's first step

        yield advance

    monkeypatch.setattr(console, "progress", interrupted_progress)
    out = tmp_path / "run"
    cfg = TrainConfig(
        data=str(tiny_data), decoder="lstm", epochs=2, batch_size=8, min_count=1, output=str(out),
        cache_dir=str(tmp_path / "cache"), decoder_config={"embed_dim": 8, "hidden_dim": 8},
    )  # fmt: skip
    with pytest.raises(Stopped) as stopped:
        train(cfg)
    assert f"stopped before the first epoch ended; nothing to resume in {out}" in str(stopped.value)
    assert list(out.iterdir()) == []  # an empty folder: the same command can simply run again
