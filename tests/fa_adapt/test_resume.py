"""Kill a real `adapt finetune` process (SIGINT, SIGTERM) mid-run, resume it, and get the same run.

The interrupted process must save a checkpoint, print how to resume and exit without a
traceback; the printed resume command must then reach the state of an uninterrupted run with
the same seed: same step count, same losses within rounding. A gate (signal_gate.py) holds the
child at a given step until its own signal handler has fired, so the test waits on events
(a marker file, the process exit), never on how fast the machine is.
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

STOPS = {"SIGINT": 3, "SIGTERM": 6}  # the step at which each signal is sent
MAX_STEPS = 8  # 20 train rows / batch 4 = 5 steps an epoch: the resumed part crosses an epoch
GATE = Path(__file__).with_name("signal_gate.py")
TIMEOUT_S = 300

ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"سوال {i}: پایتخت ایران کجاست؟"},
            {"role": "assistant", "content": f"پاسخ {i}: تهران پایتخت ایران است."},
        ]
    }
    for i in range(24)
]


def _finetune_args(model: Path, data: Path, out: Path, extra: Path) -> list[str]:
    return [
        "finetune", "--method", "lora", "--model", str(model), "--data", str(data),
        "--output", str(out), "--quantization", "none", "--max-steps", str(MAX_STEPS),
        "--batch-size", "4", "--lr", "0.01", "--seed", "7", "--config", str(extra),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("resume")
    (folder / "chat.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8"
    )
    # settings the CLI has no flag for go through the YAML config, as a user would give them
    (folder / "extra.yaml").write_text("logging-steps: 1\neval-steps: 4\nsave-steps: 4\n")
    return folder


def _run_until_signal(args: list[str], stop_at: int, sig: int, marker: Path) -> dict:
    """Run `adapt ARGS` in a child process; when it is held at step `stop_at`, send `sig`; wait for exit."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(GATE), str(stop_at), str(marker), *args]
    # output to files, not pipes: a child blocked on a full pipe would never reach the step
    out_file, err_file = marker.with_suffix(".stdout"), marker.with_suffix(".stderr")
    with out_file.open("w") as out, err_file.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not marker.exists():  # the event: the child finished step `stop_at` and waits
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                pytest.fail(f"run ended or hung before step {stop_at}:\n{err_file.read_text()[-3000:]}")
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.wait(timeout=TIMEOUT_S)
        stdout, stderr = out_file.read_text(), err_file.read_text()
        complete = sorted(p.parent.name for p in marker.parent.glob("run/checkpoints/*/trainer_state.json"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"rc": proc.returncode, "stdout": stdout, "stderr": stderr, "checkpoints": complete}


def _hint(stderr: str) -> list[str]:
    words = shlex.split(stderr.split("Resume with: ")[1].splitlines()[0])
    assert words[:2] == ["adapt", "finetune"], words
    return words[1:]


@pytest.fixture(scope="module")
def stopped(tiny_model_dir, workdir) -> dict[str, dict]:
    """A real run stopped by SIGINT at step 3; its printed resume command, run for real, stopped by
    SIGTERM at step 6 (so resuming a resumed run is covered too). Two processes: ~10 s of imports each."""
    out = workdir / "run"
    first = _run_until_signal(
        _finetune_args(tiny_model_dir, workdir / "chat.jsonl", out, workdir / "extra.yaml"),
        STOPS["SIGINT"], signal.SIGINT, workdir / "sigint.reached",
    )  # fmt: skip
    first["out"] = out
    second = {"rc": None, "stderr": "", "stdout": "", "checkpoints": [], "out": out}
    if "Resume with: " in first["stderr"]:
        second = _run_until_signal(
            _hint(first["stderr"]), STOPS["SIGTERM"], signal.SIGTERM, workdir / "sigterm.reached"
        )
        second["out"] = out
    return {"SIGINT": first, "SIGTERM": second}


@pytest.fixture(scope="module")
def reference(tiny_model_dir, workdir) -> dict:
    """The same run without interruption, through the same CLI."""
    from typer.testing import CliRunner

    from adapt.cli import app

    out = workdir / "reference"
    args = _finetune_args(tiny_model_dir, workdir / "chat.jsonl", out, workdir / "extra.yaml")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"  # only the result on stdout: Trainer's log dicts are not printed
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("name", list(STOPS))
def test_signal_saves_checkpoint_and_prints_resume_hint(stopped, name):
    run, step = stopped[name], STOPS[name]
    assert run["rc"] == 128 + getattr(signal, name), run["stderr"][-3000:]
    assert "Traceback" not in run["stderr"]
    assert f"stopped at step {step} of {MAX_STEPS}" in run["stderr"]
    assert run["stdout"] == ""  # stdout is for results (the run path); logs and progress go to stderr
    assert f"checkpoint-{step}" in run["checkpoints"]  # complete: trainer_state.json is written last
    assert not (run["out"] / "metrics.json").exists()  # an unfinished run is not a run folder
    assert _hint(run["stderr"]) == ["finetune", "--output", str(run["out"]), "--resume"]


def test_resume_reaches_the_uninterrupted_state(stopped, reference):
    from typer.testing import CliRunner

    from adapt.cli import app

    run = stopped["SIGTERM"]
    result = CliRunner().invoke(app, _hint(run["stderr"]))  # exactly the printed command
    assert result.exit_code == 0, result.output
    metrics = json.loads((run["out"] / "metrics.json").read_text())
    assert metrics["steps"] == reference["steps"] == MAX_STEPS
    assert metrics["epochs"] == pytest.approx(reference["epochs"])
    # every logged step loss (1..8: trained in three processes) and the evaluations match
    assert [s for s, _ in metrics["train_loss"]] == list(range(1, MAX_STEPS + 1))
    for (s, got), (_, want) in zip(metrics["train_loss"], reference["train_loss"], strict=True):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-5), f"step {s}"
    assert metrics["final_eval_loss"] == pytest.approx(reference["final_eval_loss"], rel=1e-4)
    assert metrics["initial_eval_loss"] == pytest.approx(reference["initial_eval_loss"], rel=1e-4)
    assert [s for s, _ in metrics["eval_loss"]] == [s for s, _ in reference["eval_loss"]]


def test_resume_without_a_stopped_run_is_a_user_error(tmp_path):
    from typer.testing import CliRunner

    from adapt.cli import app

    result = CliRunner().invoke(app, ["finetune", "--output", str(tmp_path / "nothing"), "--resume"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith("error: --resume: no complete checkpoint in")


def test_resume_passes_over_a_checkpoint_cut_short_by_a_kill(tmp_path):
    from fa_adapt.runs import latest_checkpoint

    for step, state in [(2, "{}"), (4, None), (5, '{"global_st')]:  # 4: no state yet, 5: half written
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"x")
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-x").mkdir()
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
