"""`adapt finetune` owns its run folder and checks every setting before any model loads:
a user's files are never overwritten, a busy folder is refused, non-finite or mistyped values and
unknown LoRA targets get one line and exit 2, and a loss that turns non-finite stops the run."""

from __future__ import annotations

import pytest

from adapt.errors import UserError


def _invoke(*args):
    from typer.testing import CliRunner

    from adapt.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line_error(result, *parts: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    for part in parts:
        assert part in errors[0], (part, errors[0])
    return errors[0]


def _tiny(tiny_model_dir, chat_jsonl, out, *extra):
    return _invoke(
        "finetune", "--model", tiny_model_dir, "--data", chat_jsonl, "--quantization", "none",
        "--max-steps", 1, "--batch-size", 4, "--output", out, *extra,
    )  # fmt: skip


def test_a_folder_with_the_users_files_is_refused_and_untouched(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("MY OWN CONFIG")
    (mine / "summary.md").write_text("notes")
    # refused before the model loads: no --model is given, so the embedded default would load
    for extra in ([], ["--overwrite"]):
        _one_line_error(_invoke("finetune", "--max-steps", 1, "--output", mine, *extra), "not a fa_adapt run")
    assert (mine / "config.json").read_text() == "MY OWN CONFIG"
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "summary.md"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (["--lr", "inf"], "--lr must be a finite number, got inf"),
        (["--epochs", "inf"], "--epochs must be a finite number"),
        (["--output", "/proc/adapt-run"], "cannot create the folder"),
    ],
)
def test_bad_values_are_one_line_before_any_model_loads(tmp_path, args, message):
    out = [] if "--output" in args else ["--output", tmp_path / "out"]
    _one_line_error(_invoke("finetune", "--max-steps", 1, *out, *args), message)
    assert not (tmp_path / "out").exists()  # nothing half set up is left behind


def test_output_naming_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    _one_line_error(_invoke("finetune", "--output", tmp_path / "file"), "file: is a file, not a folder")


@pytest.mark.parametrize(
    ("yaml_value", "message"),
    [("[1, 2]", "--lr must be a number, got list [1, 2]"), ("abc", "--lr must be a number, got 'abc'")],
)
def test_yaml_values_of_the_wrong_type(tmp_path, yaml_value, message):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"lr: {yaml_value}\noutput: {tmp_path / 'out'}\n")
    _one_line_error(_invoke("finetune", "--config", cfg), message)


def test_yaml_numbers_written_as_text_are_numbers():
    from fa_adapt.config import resolve_config

    cfg = resolve_config(lr="1e-3", max_steps="4", output="x")  # YAML 1.1 reads 1e-3 as a string
    assert cfg.lr == 1e-3 and cfg.max_steps == 4
    with pytest.raises(UserError, match="--max-steps must be a whole number, got 2.5"):
        resolve_config(max_steps=2.5, output="x")


def test_unknown_lora_target_lists_close_matches(tiny_model_dir, chat_jsonl, tmp_path):
    result = _tiny(tiny_model_dir, chat_jsonl, tmp_path / "t", "--target-modules", "q_prj,v_proj")
    _one_line_error(result, "--target-modules: 'q_prj' matches no module", "did you mean q_proj")


def test_second_run_into_a_busy_folder_is_refused(tiny_model_dir, chat_jsonl, tmp_path):
    import os

    from adapt.run_folder import run_lock

    out = tmp_path / "busy"
    out.mkdir()
    with run_lock(out):  # a run in progress (this process)
        result = _tiny(tiny_model_dir, chat_jsonl, out)
    _one_line_error(result, f"is in use by another adapt run (PID {os.getpid()})")


def test_overwrite_replaces_a_previous_run_only(tiny_model_dir, chat_jsonl, tmp_path):
    out = tmp_path / "run"
    assert _tiny(tiny_model_dir, chat_jsonl, out).exit_code == 0
    first = (out / "metrics.json").stat().st_mtime_ns
    _one_line_error(_tiny(tiny_model_dir, chat_jsonl, out), "already holds a fa_adapt run", "--overwrite")
    assert (out / "metrics.json").stat().st_mtime_ns == first
    result = _tiny(tiny_model_dir, chat_jsonl, out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (out / "metrics.json").stat().st_mtime_ns != first
    (out / "thesis.txt").write_text("mine")
    _one_line_error(_tiny(tiny_model_dir, chat_jsonl, out, "--overwrite"), "other files (thesis.txt)")
    assert (out / "thesis.txt").read_text() == "mine"


def test_non_finite_loss_stops_the_run_and_keeps_only_good_checkpoints(tiny_model_dir, chat_jsonl, tmp_path):
    out = tmp_path / "diverges"
    result = _invoke(
        "finetune", "--model", tiny_model_dir, "--data", chat_jsonl, "--quantization", "none",
        "--max-steps", 4, "--batch-size", 4, "--lr", "1e30", "--output", out,
    )  # fmt: skip
    line = _one_line_error(result, "training stopped at step", "became nan", "lower --lr")
    assert "no checkpoint had been saved yet" in line
    assert not (out / "config.json").exists()  # no run folder that looks complete
