"""adapt.run_folder: a run's folder is its own (claimed before anything loads) and locked while it runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapt.errors import UserError
from adapt.run_folder import LOCK_NAME, claim_output, run_lock

RUN_FILES = {"config.json", "metrics.json", "adapter"}


def _claim(folder: Path, overwrite: bool = False) -> None:
    claim_output(
        folder,
        "demo",
        is_run=lambda f: (f / "config.json").is_file(),
        run_names=RUN_FILES,
        overwrite=overwrite,
    )


def _previous_run(folder: Path) -> None:
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "weights.bin").write_text("old")
    (folder / "config.json").write_text("{}")
    (folder / "metrics.json").write_text("{}")


def test_new_and_empty_folders_are_taken(tmp_path):
    _claim(tmp_path / "new" / "nested")
    assert not (tmp_path / "new").exists()  # checked, not made: a later mistake leaves nothing
    with run_lock(tmp_path / "new" / "nested"):  # the run makes it
        assert (tmp_path / "new" / "nested" / LOCK_NAME).is_file()
    assert not (tmp_path / "new").exists()  # and a run that wrote nothing leaves nothing
    (tmp_path / "empty").mkdir()
    _claim(tmp_path / "empty")
    with run_lock(tmp_path / "empty"):
        (tmp_path / "empty" / "result.txt").write_text("kept")
    assert (tmp_path / "empty" / "result.txt").is_file()


def test_a_users_files_are_refused_and_left_alone(tmp_path):
    (tmp_path / "config.json").write_text("MY OWN CONFIG")
    (tmp_path / "thesis.txt").write_text("notes")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="already holds files that are not a demo run"):
            claim_output(tmp_path, "demo", lambda f: False, RUN_FILES, overwrite=overwrite)
    assert (tmp_path / "config.json").read_text() == "MY OWN CONFIG"
    assert (tmp_path / "thesis.txt").read_text() == "notes"


def test_overwrite_replaces_only_a_previous_run(tmp_path):
    _previous_run(tmp_path)
    with pytest.raises(UserError, match="already holds a demo run; pass --resume .* --overwrite"):
        _claim(tmp_path)
    (tmp_path / "thesis.txt").write_text("notes")  # a user's file beside the run: never deleted
    with pytest.raises(UserError, match=r"holds a demo run and other files \(thesis.txt\)"):
        _claim(tmp_path, overwrite=True)
    assert (tmp_path / "adapter" / "weights.bin").is_file()
    (tmp_path / "thesis.txt").unlink()
    _claim(tmp_path, overwrite=True)
    assert list(tmp_path.iterdir()) == []


def test_output_that_is_a_file_or_cannot_be_made(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match="a-file: is a file, not a folder"):
        _claim(tmp_path / "a-file")
    with pytest.raises(UserError, match="cannot create the folder"):
        _claim(Path("/proc/adapt-cannot-be-here"))


def test_second_run_into_a_locked_folder_is_refused_with_the_holders_pid(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from adapt.run_folder import run_lock\n"
            "with run_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"in use by another adapt run \\(PID {holder.pid}\\)"):
            with run_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock file is stale, and the next run takes it over
    assert (tmp_path / LOCK_NAME).is_file()
    with run_lock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == str(os.getpid())
    assert not (tmp_path / LOCK_NAME).exists()
