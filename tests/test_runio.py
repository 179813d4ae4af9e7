"""adapt.runio: atomic writes keep the old file on failure and give new files normal modes."""

import os

import pytest

from adapt.runio import atomic_path, read_json, staging_folder, swap_in, write_json


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"loss": 1.0})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"loss": ')  # half a file, then the writer dies
        raise RuntimeError("killed mid-write")
    assert read_json(target) == {"loss": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_written_files_get_the_umask_mode_not_owner_only(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    write_json(tmp_path / "config.json", {"a": 1})
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_swap_in_replaces_a_folder_whole_with_normal_modes(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "old.bin").write_text("old")
    with staging_folder(tmp_path) as tmp:
        staged = tmp / "adapter"
        (staged / "sub").mkdir(parents=True)
        weights = staged / "sub" / "w.safetensors"
        weights.write_text("new")
        os.chmod(weights, 0o600)  # as safetensors writes its files
        swap_in(staged, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no staging, no old copy
    assert [p.name for p in target.iterdir()] == ["sub"]
    assert (target / "sub" / "w.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (target / "sub").stat().st_mode & 0o777 == 0o777 & ~umask
