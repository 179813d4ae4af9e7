"""Shared helpers for capkit tests: the real Flickr8k sample and tiny dataset layouts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def sample_dir() -> Path:
    base = Path(os.environ.get("ADAPT_SHARED_DATA") or REPO.parent / "shared" / "data")
    return base / "flickr8k_sample"


@pytest.fixture(scope="session")
def flickr_sample() -> Path:
    path = sample_dir()
    if not (path / "captions.txt").is_file():
        pytest.skip(f"real Flickr8k sample not found at {path} (set ADAPT_SHARED_DATA)")
    return path


def _make_images(folder: Path, names: list[str], size=(40, 30)) -> None:
    """Small generated JPEGs, each a different colour."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", size, ((40 * i) % 256, (90 * i) % 256, 200)).save(folder / name)


CAPTIONS = {
    "a.jpg": ["A dog runs on the grass .", "A brown dog is running"],
    "b.jpg": ["Two children play in the water .", "Kids splash, laughing"],
    "c.jpg": ["A man rides a bike .", "A cyclist on a road"],
}


@pytest.fixture
def make_images():
    """`make_images(folder, names, size=(40, 30))`: write small generated JPEGs."""
    return _make_images


TINY_WORDS = [
    "red square on a table",
    "blue circle in the sky",
    "green field with grass",
    "a yellow sun shines",
]


@pytest.fixture
def tiny_data(tmp_path, make_images) -> Path:
    """12 generated 48x48 JPEGs with two captions each in `captions.csv` (seeded split: 10/1/1)."""
    names = [f"{i:02d}.jpg" for i in range(12)]
    make_images(tmp_path / "data", names, size=(48, 48))
    rows = [f"{n},{TINY_WORDS[i % 4]}\n{n},the {TINY_WORDS[i % 4]}\n" for i, n in enumerate(names)]
    (tmp_path / "data" / "captions.csv").write_text("image,caption\n" + "".join(rows))
    return tmp_path / "data"


@pytest.fixture
def captions() -> dict[str, list[str]]:
    return {k: list(v) for k, v in CAPTIONS.items()}


@pytest.fixture
def one_thread():
    """Tiny models on a 2-core machine: extra intra-op threads only spin and wait (up to 50x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def lite0():
    """The real EfficientNet-Lite0 encoder (shipped weights), loaded once for the whole session."""
    from capkit.encoders import load_encoder

    return load_encoder("efficientnet_lite0")
