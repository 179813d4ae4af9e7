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


def test_switching_encoders_never_reuses_features(tmp_path, lite0, make_images):
    """One cache, three Lite encoders (224, 240, 260 px): each gets its own folder and grid."""
    from capkit.encoders import load_encoder

    make_images(tmp_path / "img", ["a.jpg", "b.jpg"])
    images = [tmp_path / "img" / n for n in ("a.jpg", "b.jpg")]
    cache = tmp_path / "cache"
    assert extract_features(lite0, images, cache, progress=False)["cached"] == 0
    for name, side in [("efficientnet_lite1", 8), ("efficientnet_lite2", 9)]:
        encoder = load_encoder(name)
        first = extract_features(encoder, images, cache, progress=False)
        assert first["cached"] == 0 and first["grid"].shape == (2, side * side, 1280)  # lite0's not reused
        assert extract_features(encoder, images, cache, progress=False)["cached"] == 2  # its own are
        lite0_file = next(f for f in (cache / "features").rglob("*.safetensors") if "lite0" in f.parent.name)
        assert _read_cached(lite0_file, encoder) is None  # nor would a misplaced file pass the check
    folders = sorted(f.name for f in (cache / "features").iterdir())
    assert [f.split("-")[0] for f in folders] == [
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
    ]
    assert [f.split("-")[1] for f in folders] == ["resize224x224", "resize240x240", "resize260x260"]


def test_two_weight_files_of_one_model_do_not_share_features(tmp_path, make_images):
    """`--encoder resnet18=a.pth` then `=b.pth`: other weights, other features, other cache folder."""
    import torchvision

    from capkit.encoders import load_encoder

    make_images(tmp_path / "img", ["a.jpg"])
    image = tmp_path / "img" / "a.jpg"
    encoders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        torch.save(torchvision.models.resnet18().state_dict(), tmp_path / f"r{seed}.pth")
        encoders.append(load_encoder(f"resnet18={tmp_path / f'r{seed}.pth'}"))
    assert encoders[0].cache_key != encoders[1].cache_key
    a, b = (extract_features(e, [image], tmp_path / "cache", progress=False) for e in encoders)
    assert a["cached"] == b["cached"] == 0 and not torch.equal(a["pooled"], b["pooled"])
