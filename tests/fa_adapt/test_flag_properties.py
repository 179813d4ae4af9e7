"""Property tests: any value of any numeric or path flag of `finetune` and `generate`, on the command
line or in YAML, ends with exit 0 or a clean exit 2 (never a traceback), and changes no file outside
the run folder. A bounded number of examples on a tiny model keeps it in the normal suite."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow

VALUES = ["nan", "inf", "-inf", "-1", "0", "1", "2", "1e308", "1e-300", "abc", "1.5", "", "[1, 2]", "{a: 1}"]
FINETUNE_NUMBERS = [
    "--lr",
    "--epochs",
    "--max-steps",
    "--batch-size",
    "--grad-accum",
    "--max-length",
    "--seed",
]
OUTPUTS = ["new", "nested/deeper", "a-file", "/proc/adapt-run", "existing-run", "users-folder"]
GENERATE_NUMBERS = ["--max-new-tokens", "--no-repeat-ngram", "--temperature", "--top-p", "--seed"]
FUZZ = settings.get_profile("cli-fuzz")  # tests/conftest.py


def _invoke(*args):
    from typer.testing import CliRunner

    from adapt.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir):
    """A folder with the user's own files, a finished tiny run and the chat data."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("fa_conftest", Path(__file__).with_name("conftest.py"))
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    root = tmp_path_factory.mktemp("fuzz")
    data = root / "chat.jsonl"
    data.write_text("\n".join(json.dumps(c, ensure_ascii=False) for c in conftest.CONVERSATIONS) + "\n")
    (root / "a-file").write_text("the user's file")
    (root / "users-folder").mkdir()
    (root / "users-folder" / "thesis.txt").write_text("notes")
    run = root / "existing-run"
    result = _invoke(
        "finetune", "--model", tiny_model_dir, "--data", data, "--quantization", "none",
        "--max-steps", 1, "--batch-size", 4, "--output", run,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return root, data, run


@FUZZ
@given(
    flag=st.sampled_from(FINETUNE_NUMBERS),
    value=st.sampled_from(VALUES),
    in_yaml=st.booleans(),
    output=st.sampled_from(OUTPUTS),
)
def test_finetune_never_crashes_and_touches_nothing_else(
    workspace, tiny_model_dir, checks, flag, value, in_yaml, output
):
    root, data, _ = workspace
    target = Path(output) if output.startswith("/") else root / output
    fresh = output in ("new", "nested/deeper")
    if fresh:  # a new folder per example
        target = target.with_name(f"{target.name}-{abs(hash((flag, value, in_yaml))) % 10**8}")
    before = checks.snapshot(root, target if fresh else None)
    args = ["finetune", "--model", tiny_model_dir, "--data", data, "--quantization", "none"]
    args += ["--batch-size", 4, "--output", target]
    if flag != "--max-steps":
        args += ["--max-steps", 1]  # a valid huge --epochs must not train for hours
    if in_yaml:
        cfg = root / "fuzz.yaml"
        cfg.write_text(f"{flag[2:]}: {value or '~'}\n")
        before[str(cfg)] = hashlib.sha256(cfg.read_bytes()).hexdigest()
        args += ["--config", cfg]
    else:
        args += [flag, value]
    result = _invoke(*args)
    checks.assert_clean_exit(result)
    assert (
        checks.snapshot(root, target if fresh else None) == before
    )  # nothing outside the run folder changed


@FUZZ
@given(flag=st.sampled_from(GENERATE_NUMBERS), value=st.sampled_from(VALUES))
def test_generate_never_crashes(workspace, checks, flag, value):
    root, _, run = workspace
    before = checks.snapshot(root, None)
    args = ["generate", run, "سلام", "--json", flag, value]
    if flag != "--max-new-tokens":
        args += ["--max-new-tokens", 2]
    checks.assert_clean_exit(_invoke(*args))
    assert checks.snapshot(root, None) == before
