"""The encoder feature cache is checked before use and rebuilt when damaged, never trusted.

Every test points the cache at tmp_path: the user's ~/.cache/capkit is never touched.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from capkit.features import _image_key, _read_cached, extract_features

pytestmark = pytest.mark.usefixtures("one_thread")


def _cache_file(cache: Path, encoder, image: Path) -> Path:
    [folder] = (cache / "features").iterdir()
    return folder / f"{_image_key(image)}.safetensors"


def _flip_last_byte(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x10  # a grid value changes, the size and the header do not
    f.write_bytes(bytes(data))


def _wrong_shape(f: Path) -> None:
    save_file({"pooled": torch.zeros(1280), "grid": torch.zeros(10, 1280, dtype=torch.float16)}, str(f))


def _no_checksum(f: Path) -> None:  # readable tensors of the right shape, but nothing vouches for them
    save_file({"pooled": torch.ones(1280), "grid": torch.ones(49, 1280, dtype=torch.float16)}, str(f))


DAMAGE = {
    "truncated": lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]),
    "emptied": lambda f: f.write_bytes(b""),
    "garbage": lambda f: f.write_bytes(b"\x00not safetensors" * 100),
    "flipped-byte": _flip_last_byte,
    "deleted": lambda f: f.unlink(),
    "wrong-shape": _wrong_shape,
    "no-checksum": _no_checksum,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_cache_files_are_rebuilt(tmp_path, lite0, make_images, damage):
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    make_images(tmp_path / "img", names)
    images = [tmp_path / "img" / n for n in names]
    cache = tmp_path / "cache"
    first = extract_features(lite0, images, cache, progress=False)
    assert first["cached"] == 0 and first["failed"] == []
    damaged = [_cache_file(cache, lite0, images[i]) for i in (1, 3)]  # half the cache
    for f in damaged:
        DAMAGE[damage](f)
        assert _read_cached(f, lite0) is None  # the check itself rejects it

    second = extract_features(lite0, images, cache, progress=False)
    assert second["cached"] == 2  # only the intact half was trusted
    torch.testing.assert_close(second["pooled"], first["pooled"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(second["grid"], first["grid"], atol=2e-3, rtol=2e-3)
    assert all(_read_cached(f, lite0) is not None for f in damaged)  # rewritten, valid again
    assert extract_features(lite0, images, cache, progress=False)["cached"] == 4


def test_a_write_killed_halfway_leaves_no_cache_file(tmp_path, lite0, make_images, monkeypatch):
    import safetensors.torch

    make_images(tmp_path / "img", ["a.jpg"])
    image = tmp_path / "img" / "a.jpg"

    def dies_halfway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        extract_features(lite0, [image], tmp_path / "cache", progress=False)
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []  # no target, no temp file
    monkeypatch.undo()
    again = extract_features(lite0, [image], tmp_path / "cache", progress=False)
    assert again["cached"] == 0 and _read_cached(_cache_file(tmp_path / "cache", lite0, image), lite0)
