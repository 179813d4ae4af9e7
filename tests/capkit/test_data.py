"""Dataset layouts, splits, skipped rows and images, and reading images of every odd kind."""

import csv

import pytest
from PIL import Image

from adapt.errors import UserError
from capkit.data import BadImage, load_dataset, open_image


def _kaggle(root, names, make_images):
    make_images(root / "Images", list(names))
    with open(root / "captions.txt", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption"])
        for name, caps in names.items():
            for c in caps:
                w.writerow([name, c])


def test_kaggle_layout_with_split_files(tmp_path, captions, make_images):
    _kaggle(tmp_path, captions, make_images)
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("a.jpg\nb.jpg\n")
    (tmp_path / "Flickr_8k.devImages.txt").write_text("c.jpg\na.jpg\n")  # a.jpg listed twice: stays train
    ds = load_dataset(tmp_path)
    assert ds.layout == "kaggle"
    assert [r.image.name for r in ds.split("train")] == ["a.jpg", "b.jpg"]
    assert [r.image.name for r in ds.split("val")] == ["c.jpg"]
    assert ds.split("train")[1].captions == captions["b.jpg"]  # quoted comma kept


def test_original_layout_and_missing_images_are_counted(tmp_path, captions, make_images):
    make_images(tmp_path / "Flicker8k_Dataset", ["a.jpg", "b.jpg"])
    lines = [f"{n}#{i}\t{c}" for n, caps in captions.items() for i, c in enumerate(caps)]
    (tmp_path / "Flickr8k.token.txt").write_text("\n".join([*lines, "broken line"]) + "\n")
    ds = load_dataset(tmp_path / "Flickr8k.token.txt")
    assert ds.layout == "original"
    assert sorted(r.image.name for r in ds.records) == ["a.jpg", "b.jpg"]
    assert ds.skipped == {"missing_images": 1, "bad_caption_rows": 1}


def test_karpathy_json_split(tmp_path, captions, make_images):
    import json

    _kaggle(tmp_path, captions, make_images)
    images = [
        {"filename": "a.jpg", "split": "train"},
        {"filename": "b.jpg", "split": "restval"},
        {"filename": "c.jpg", "split": "test"},
    ]
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps({"images": images}))
    ds = load_dataset(tmp_path)
    assert {r.image.name: r.split for r in ds.records} == {
        "a.jpg": "train",
        "b.jpg": "train",
        "c.jpg": "test",
    }


def test_seeded_split_puts_each_image_in_one_split(tmp_path, make_images):
    names = {f"{i:03d}.jpg": [f"caption number {i}"] for i in range(40)}
    make_images(tmp_path, list(names), size=(8, 8))
    (tmp_path / "captions.csv").write_text(
        "image,caption\n" + "".join(f"{n},{c[0]}\n" for n, c in names.items())
    )
    ds = load_dataset(tmp_path, seed=3)
    assert ds.layout == "csv"
    splits = {s: {r.image.name for r in ds.split(s)} for s in ("train", "val", "test")}
    assert sum(map(len, splits.values())) == 40 and (len(splits["val"]), len(splits["test"])) == (4, 4)
    assert (
        not (splits["train"] & splits["val"])
        and not (splits["train"] & splits["test"])
        and not (splits["val"] & splits["test"])
    )
    assert {r.image.name: r.split for r in load_dataset(tmp_path, seed=3).records} == {
        r.image.name: r.split for r in ds.records
    }


def test_real_sample_split_is_disjoint(flickr_sample):
    ds = load_dataset(flickr_sample)
    train, val = {r.image for r in ds.split("train")}, {r.image for r in ds.split("val")}
    assert (len(train), len(val)) == (762, 113) and not train & val
    assert all(len(r.captions) == 5 for r in ds.records)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "no captions found"),
        (
            lambda p: (p / "captions.csv").write_text("file,text\nx.jpg,hi\n"),
            "expected the header 'image,caption', found file,text",
        ),
        (lambda p: (p / "captions.csv").write_bytes(b"image,caption\nx.jpg,\xff\xfe\n"), "not UTF-8"),
        (lambda p: (p / "captions.csv").write_text("image,caption\nx.jpg,a dog\n"), "none of the 1 images"),
    ],
)
def test_bad_datasets_give_one_line_errors(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(UserError, match=message):
        load_dataset(tmp_path)


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(tmp_path / "nope")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_odd_modes_become_rgb(tmp_path, mode):
    img = (
        Image.new("RGB", (20, 10), (200, 30, 30)).convert(mode)
        if mode != "I;16"
        else Image.new("I;16", (20, 10), 4000)
    )
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    out = open_image(path)
    assert out.mode == "RGB" and out.size == (20, 10)


def test_exif_rotation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    Image.new("RGB", (40, 20)).save(tmp_path / "r.jpg", exif=exif)
    assert open_image(tmp_path / "r.jpg").size == (20, 40)


@pytest.mark.parametrize("content", [b"not an image at all", b"\xff\xd8\xff\xe0" + b"\x00" * 20])
def test_corrupt_images_raise_bad_image(tmp_path, content):
    (tmp_path / "bad.jpg").write_bytes(content)
    with pytest.raises(BadImage, match="bad.jpg"):
        open_image(tmp_path / "bad.jpg")


def test_truncated_jpeg_is_bad(tmp_path):
    Image.effect_noise((64, 64), 50).convert("RGB").save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImage):
        open_image(tmp_path / "cut.jpg")
