"""The converted-model cache: built atomically, checked against its manifest, rebuilt when damaged.

Uses a tiny fake build (a real safetensors file, config and tokenizer) in tmp_path: the real
~/.cache/adapt/gemma-3-270m is shared by everyone on the machine and is only ever read here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fa_adapt import loading


class FakeBuild:
    """A stand-in for the GGUF conversion that writes a small checkpoint and counts its calls."""

    def __init__(self, fail_after_weights: bool = False) -> None:
        self.calls = 0
        self.fail_after_weights = fail_after_weights

    def __call__(self, out: Path) -> None:
        import torch
        from safetensors.torch import save_file

        self.calls += 1
        save_file({"w": torch.arange(4096, dtype=torch.float32)}, str(out / "model.safetensors"))
        if self.fail_after_weights:
            raise KeyboardInterrupt  # a kill in the middle of the conversion
        (out / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
        (out / "tokenizer.json").write_text(json.dumps({"version": "1.0"}))


def _weights_ok(folder: Path) -> bool:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))["w"].shape == (4096,)


def test_built_once_then_trusted(tmp_path):
    build, target = FakeBuild(), tmp_path / "gemma"
    assert loading.cache_problem(target) == "not built yet"
    assert loading.ensure_cache(target, build) == target
    assert loading.cache_problem(target) is None and _weights_ok(target)
    manifest = json.loads((target / "adapt_cache_ok.json").read_text())
    assert manifest == {p.name: p.stat().st_size for p in target.iterdir() if p.name != "adapt_cache_ok.json"}
    loading.ensure_cache(target, build)
    assert build.calls == 1
    assert [p.name for p in tmp_path.iterdir()] == ["gemma"]  # no temporary folder left behind


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]), "model.safetensors has 1000 bytes"),
        (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json is missing"),
        (lambda d: (d / "adapt_cache_ok.json").unlink(), "the conversion did not finish"),
        (lambda d: (d / "adapt_cache_ok.json").write_text("{not json"), "unreadable"),
        (lambda d: (d / "adapt_cache_ok.json").write_text("{}"), "lists no config.json"),
    ],
    ids=["truncated-safetensors", "missing-file", "no-manifest", "bad-manifest", "empty-manifest"],
)  # fmt: skip
def test_damaged_cache_is_rebuilt_not_trusted(tmp_path, capsys, damage, problem):
    build, target = FakeBuild(), tmp_path / "gemma"
    loading.ensure_cache(target, build)
    damage(target)
    assert problem in loading.cache_problem(target)
    loading.ensure_cache(target, build)
    assert build.calls == 2
    assert loading.cache_problem(target) is None and _weights_ok(target)
    err = capsys.readouterr().err
    assert err.startswith(f"rebuilding {target}: ") and problem in err


def test_killed_build_leaves_the_old_cache_and_no_partial_one(tmp_path):
    target = tmp_path / "gemma"
    with pytest.raises(KeyboardInterrupt):
        loading.ensure_cache(target, FakeBuild(fail_after_weights=True))
    assert not target.exists() and list(tmp_path.iterdir()) == []
    loading.ensure_cache(target, FakeBuild())
    before = (target / "model.safetensors").stat().st_mtime_ns
    (target / "tokenizer.json").unlink()  # damaged, and the rebuild is then killed
    with pytest.raises(KeyboardInterrupt):
        loading.ensure_cache(target, FakeBuild(fail_after_weights=True))
    assert (target / "model.safetensors").stat().st_mtime_ns == before  # old folder untouched
    assert loading.cache_problem(target) == "tokenizer.json is missing"  # so still not trusted


def test_default_model_path_uses_the_cache_folder_from_the_environment(tmp_path, monkeypatch):
    build = FakeBuild()
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path))
    monkeypatch.setattr(loading, "_convert_gguf", build)
    assert loading.default_model_path() == tmp_path / loading.DEFAULT_MODEL_DIRNAME
    (tmp_path / loading.DEFAULT_MODEL_DIRNAME / "model.safetensors").write_bytes(b"\0" * 10)
    assert loading.default_model_path() == tmp_path / loading.DEFAULT_MODEL_DIRNAME
    assert build.calls == 2 and _weights_ok(tmp_path / loading.DEFAULT_MODEL_DIRNAME)


def test_real_cache_manifest_is_accepted_read_only():
    real = Path.home() / ".cache" / "adapt" / loading.DEFAULT_MODEL_DIRNAME
    if not (real / "adapt_cache_ok.json").is_file():
        pytest.skip(f"no converted Gemma cache at {real}")
    assert loading.cache_problem(real) is None  # only stats files: never writes there
