"""Messy images, built with PIL here: corrupt ones are skipped and counted (training, features,
`adapt caption` on several files) or a one-line error (one file); odd modes are read as RGB."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from adapt.cli import app
from capkit.data import BadImage, open_image

pytestmark = pytest.mark.usefixtures("one_thread")

# name -> (file name, builder, expected (size, {pixel: rgb})) ; expected None: unreadable
Case = tuple[str, Callable[[Path], None], tuple | None]


def _noise_jpeg(path: Path, size=(64, 48)) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG")


def _truncated(path: Path) -> None:
    _noise_jpeg(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _corrupt(path: Path) -> None:
    _noise_jpeg(path)
    data = bytearray(path.read_bytes())
    data[2:400] = bytes(398)  # the header segments are zeroed: the start marker alone is left
    path.write_bytes(bytes(data))


def _palette(path: Path) -> None:
    img = Image.new("P", (64, 48), 0)
    img.putpalette([10, 200, 30] + [0] * 765)
    img.save(path)


def _exif_rotated(path: Path) -> None:
    """Stored 60x40 (left half blue, right half red) with orientation 6: shown 40x60, blue on top."""
    img = Image.new("RGB", (60, 40), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 30, 40))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(path, "JPEG", exif=exif, quality=95)


CASES: dict[str, Case] = {
    "truncated-jpeg": ("truncated.jpg", _truncated, None),
    "corrupt-jpeg": ("corrupt.jpg", _corrupt, None),
    "not-an-image": ("notes.jpg", lambda p: p.write_text("these are my holiday notes\n"), None),
    "grayscale": ("gray.jpg", lambda p: Image.new("L", (64, 48), 100).save(p), ((64, 48), {(32, 24): (100,) * 3})),
    "rgba": ("alpha.png", lambda p: Image.new("RGBA", (64, 48), (0, 0, 255, 128)).save(p), ((64, 48), {(32, 24): (127, 127, 255)})),
    "palette": ("palette.png", _palette, ((64, 48), {(32, 24): (10, 200, 30)})),
    "cmyk": ("cmyk.jpg", lambda p: Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(p), ((64, 48), {(32, 24): (255, 0, 0)})),
    "16-bit": ("deep.png", lambda p: Image.fromarray(np.full((48, 64), 40000, np.uint16)).save(p), ((64, 48), {(32, 24): (155,) * 3})),
    "very-large": ("large.jpg", lambda p: Image.new("RGB", (6000, 4000), (10, 200, 10)).save(p), ((750, 500), {(375, 250): (10, 200, 10)})),
    "very-small": ("small.png", lambda p: Image.new("RGB", (8, 8), (1, 2, 3)).save(p), ((8, 8), {(4, 4): (1, 2, 3)})),
    "exif-rotated": ("rotated.jpg", _exif_rotated, ((40, 60), {(20, 10): (0, 0, 255), (20, 50): (255, 0, 0)})),
}  # fmt: skip
UNREADABLE = [name for name, (_, _, expected) in CASES.items() if expected is None]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad-images")
    paths = {}
    for name, (file, build, _) in CASES.items():
        build(folder / file)
        paths[name] = folder / file
    return paths


@pytest.mark.parametrize("case", list(CASES))
def test_open_image_converts_odd_modes_and_rejects_broken_files(images, case):
    expected = CASES[case][2]
    if expected is None:
        with pytest.raises(BadImage, match=images[case].name):
            open_image(images[case])
        return
    image = open_image(images[case])
    size, pixels = expected
    # A 6000x4000 JPEG is decoded at 1/8 scale (draft): fast, and still far above 224x224.
    assert image.mode == "RGB" and image.size == size
    for xy, rgb in pixels.items():
        assert np.abs(np.array(image.getpixel(xy)) - rgb).max() <= 6, (xy, image.getpixel(xy))


@pytest.mark.parametrize("case", list(CASES))
def test_features_skip_unreadable_images_and_encode_the_rest(images, lite0, tmp_path, case):
    from capkit.features import extract_features

    ok = images["very-small"]
    feats = extract_features(lite0, [images[case], ok], tmp_path / "cache", progress=False)
    assert feats["failed"] == ([0] if case in UNREADABLE else [])
    assert feats["pooled"][1].abs().sum() > 0 and feats["pooled"].isfinite().all()
    if case not in UNREADABLE:
        assert feats["pooled"][0].abs().sum() > 0


def _caption(*args):
    return CliRunner().invoke(app, ["caption", *map(str, args)])


@pytest.mark.parametrize("case", list(CASES))
def test_adapt_caption_on_one_file(images, case):
    result = _caption(images[case])
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    if case in UNREADABLE:
        assert result.exit_code == 2
        assert lines[0].startswith("error: ") and str(images[case]) in lines[0]
    else:
        assert result.exit_code == 0, result.output
        assert not lines[0].startswith("error") and lines[0].split()  # a caption from the shipped captioner


def test_adapt_caption_on_several_files_skips_and_counts_unreadable_ones(images, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in images.values():
        shutil.copy(path, folder / path.name)
    result = _caption(folder, "--json")
    assert result.exit_code == 0, result.output
    assert f"skipped {len(UNREADABLE)} unreadable image(s) of {len(CASES)}" in result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == len(CASES)
    failed = {Path(r["image"]).name for r in rows if r["caption"] is None}
    assert failed == {CASES[name][0] for name in UNREADABLE}
    assert all(r["error"].startswith(r["image"]) for r in rows if r["caption"] is None)
    plain = _caption(folder)  # tab-separated lines: only the images that have a caption
    assert plain.exit_code == 0 and len(plain.stdout.strip().splitlines()) == len(CASES) - len(UNREADABLE)
    only_bad = tmp_path / "only-bad"
    only_bad.mkdir()
    for name in UNREADABLE:
        shutil.copy(images[name], only_bad / images[name].name)
    result = _caption(only_bad)
    assert result.exit_code == 2 and "error: none of the 3 images could be read" in result.output


def test_training_skips_and_counts_corrupt_and_missing_images(images, tiny_data, tmp_path):
    from capkit.training import TrainConfig, train

    rows, odd = [], []
    for case, path in images.items():
        shutil.copy(path, tiny_data / path.name)
        rows.append(f"{path.name},a picture of a {case.replace('-', ' ')}\n")
        odd.append(path.name)
    rows.append("gone.jpg,an image that is not there\n")
    with open(tiny_data / "captions.csv", "a") as fh:
        fh.writelines(rows)
    # Split files put every odd image in training (no seeded split could hide one in test).
    train_names = [f"{i:02d}.jpg" for i in range(10)] + odd + ["gone.jpg"]
    (tiny_data / "Flickr_8k.trainImages.txt").write_text("\n".join(train_names) + "\n")
    (tiny_data / "Flickr_8k.devImages.txt").write_text("10.jpg\n11.jpg\n")
    cfg = TrainConfig(
        data=str(tiny_data),
        decoder="lstm",
        epochs=1,
        batch_size=8,
        min_count=1,
        output=str(tmp_path / "run"),
        cache_dir=str(tmp_path / "cache"),
        decoder_config={"embed_dim": 8, "hidden_dim": 8},
    )
    data = json.loads((train(cfg) / "metrics.json").read_text())["data"]
    assert data["corrupt_images"] == len(UNREADABLE)
    assert data["skipped"] == {"missing_images": 1}
    usable = 10 + len(CASES) - len(UNREADABLE)
    assert data["train_examples"] == 2 * 10 + (usable - 10)  # tiny images have two captions each
