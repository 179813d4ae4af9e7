"""Property tests: any value of any numeric or path flag of `caption` and `caption-train` ends with
exit 0 or a clean exit 2 (never a traceback) and changes no file outside the run folder. A bounded
number of examples on tiny models and data keeps it in the normal suite."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

_spec = importlib.util.spec_from_file_location(
    "caption_cli_tests", Path(__file__).with_name("test_caption_cli.py")
)
caption_cli_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(caption_cli_tests)

VALUES = ["nan", "inf", "-inf", "-1", "0", "1", "2", "1e308", "1e-300", "abc", "1.5", ""]
CAPTION_NUMBERS = ["--beam-size", "--no-repeat-ngram", "--max-len"]
TRAIN_NUMBERS = ["--epochs", "--batch-size", "--lr", "--patience", "--min-count", "--max-length", "--seed"]
PATHS = ["new.png", "nested/deeper/map.png", "a-file/map.png", "/proc/map.png", "photos"]
OUTPUTS = ["new", "a-file", "/proc/adapt-run", "users-folder"]
FUZZ = settings.get_profile("cli-fuzz")  # tests/conftest.py


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    run = caption_cli_tests.make_run(root / "att")
    [photo] = caption_cli_tests.make_photos(root / "photos", 1)
    (root / "a-file").write_text("the user's file")
    (root / "users-folder").mkdir()
    (root / "users-folder" / "thesis.txt").write_text("notes")
    return root, run, photo


@FUZZ
@given(flag=st.sampled_from(CAPTION_NUMBERS), value=st.sampled_from(VALUES), path=st.sampled_from(PATHS))
def test_caption_never_crashes_and_touches_nothing_else(workspace, checks, flag, value, path):
    root, run, photo = workspace
    target = Path(path) if path.startswith("/") else root / path
    before = checks.snapshot(root, target.parent if path.startswith(("new", "nested")) else None)
    args = ["caption", photo, "--model", run, "--attention-map", target, flag, value]
    if flag != "--beam-size":
        args += ["--decoding", "greedy"]
    checks.assert_clean_exit(caption_cli_tests.invoke(*args))
    if path.startswith(("new", "nested")):
        before = {k: v for k, v in before.items() if not k.startswith(str(target.parent))}
        after = {k: v for k, v in checks.snapshot(root).items() if not k.startswith(str(target.parent))}
    else:
        after = checks.snapshot(root)
    assert after == before


@FUZZ
@given(flag=st.sampled_from(TRAIN_NUMBERS), value=st.sampled_from(VALUES), output=st.sampled_from(OUTPUTS))
def test_caption_train_never_crashes_and_touches_nothing_else(
    workspace, tiny_data, monkeypatch, checks, flag, value, output
):
    root, _, _ = workspace
    monkeypatch.setenv("CAPKIT_CACHE", str(root / "cache"))
    target = Path(output) if output.startswith("/") else root / output
    if output == "new":
        target = target.with_name(f"new-{abs(hash((flag, value))) % 10**8}")
    before = checks.snapshot(root, target if output == "new" else None)
    args = ["caption-train", tiny_data, "--decoder", "lstm", "--min-count", "1", "--output", target]
    if flag != "--epochs":
        args += ["--epochs", "1"]
    result = caption_cli_tests.invoke(*args, flag, value)
    checks.assert_clean_exit(result)
    assert checks.snapshot(root, target if output == "new" else None) == before
