"""Caption datasets on disk: Flickr8k (Kaggle and original layouts) and a plain `captions.csv`.

`load_dataset(path)` finds the layout, reads the captions, assigns every image to exactly one
split and reports what it had to skip. `open_image` reads any image as RGB (EXIF rotation applied,
odd modes converted) or raises `BadImage`.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from adapt.errors import UserError

SPLITS = ("train", "val", "test")
# Original Flickr8k split files (possibly inside Flickr8k_text/) and their split names.
_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
_KARPATHY = "dataset_flickr8k.json"
_LAYOUTS = (
    "a folder with captions.txt + Images/ (Kaggle Flickr8k), "
    "Flickr8k.token.txt + Flicker8k_Dataset/ (original Flickr8k) or captions.csv (image,caption)"
)


class BadImage(Exception):
    """An image file that cannot be decoded (corrupt, truncated, not an image, too large)."""


@dataclass
class ImageRecord:
    image: Path
    captions: list[str]
    split: str


@dataclass
class CaptionDataset:
    """Images with their reference captions and split; `skipped` counts what could not be used."""

    root: Path
    layout: str
    records: list[ImageRecord]
    split_source: str
    skipped: Counter = field(default_factory=Counter)

    def split(self, name: str) -> list[ImageRecord]:
        return [r for r in self.records if r.split == name]

    def stats(self) -> dict:
        """Counts per split, caption lengths and what was skipped."""
        lengths = [len(c.split()) for r in self.records for c in r.captions]
        return {
            "root": str(self.root),
            "layout": self.layout,
            "split_source": self.split_source,
            "images": len(self.records),
            "captions": len(lengths),
            "images_per_split": {s: len(self.split(s)) for s in SPLITS},
            "caption_words": {
                "min": min(lengths, default=0),
                "mean": round(sum(lengths) / max(len(lengths), 1), 2),
                "max": max(lengths, default=0),
            },
            "skipped": dict(self.skipped),
        }


def load_dataset(
    path: str | os.PathLike[str], seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> CaptionDataset:
    """Read a captioning dataset folder (or its caption file) in any supported layout."""
    root = Path(path)
    if not root.exists():
        raise UserError(f"PATH {root}: dataset path does not exist; expected {_LAYOUTS}")
    given = root
    if root.is_file():
        if root.name not in _CAPTION_FILES:
            raise UserError(
                f"PATH {root}: a file, not a dataset; give the dataset folder or its "
                f"{' / '.join(_CAPTION_FILES)}"
            )
        root = root.parent
    try:
        layout, caption_file, image_dir = _find_layout(root)
    except UserError as err:
        raise UserError(str(err).replace(f"{root}:", f"{given}:", 1)) from None
    skipped: Counter = Counter()
    if layout == "original":
        captions = _read_token_file(caption_file, skipped)
    else:
        captions = _read_csv(caption_file, skipped)
    present: dict[str, list[str]] = {}
    for name, caps in captions.items():
        if (image_dir / name).is_file():
            present[name] = caps
        else:
            skipped["missing_images"] += 1
    if not present:
        raise UserError(f"{caption_file}: none of the {len(captions)} images it names exist in {image_dir}")
    split_of, source = _assign_splits(root, sorted(present), seed, val_fraction, test_fraction)
    records = []
    for name in sorted(present):
        if name not in split_of:
            skipped["images_in_no_split"] += 1
            continue
        records.append(ImageRecord(image_dir / name, present[name], split_of[name]))
    return CaptionDataset(root, layout, records, source, skipped)


_CAPTION_FILES = ("captions.txt", "Flickr8k.token.txt", "captions.csv")


def _find_layout(root: Path) -> tuple[str, Path, Path]:
    if (root / "captions.txt").is_file():
        images = root / "Images"
        return "kaggle", root / "captions.txt", images if images.is_dir() else root
    for token in (root / "Flickr8k.token.txt", root / "Flickr8k_text" / "Flickr8k.token.txt"):
        if token.is_file():
            for name in ("Flicker8k_Dataset", "Flickr8k_Dataset"):
                if (root / name).is_dir():
                    return "original", token, root / name
            raise UserError(f"{token} found but no Flicker8k_Dataset/ image folder beside it in {root}")
    if (root / "captions.csv").is_file():
        return "csv", root / "captions.csv", root
    raise UserError(f"{root}: no captions found; expected {_LAYOUTS}")


def _read_csv(path: Path, skipped: Counter) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            if header[:2] != ["image", "caption"]:
                raise UserError(
                    f"{path}: line 1: expected the header 'image,caption', found {','.join(header) or 'nothing'}"
                )
            for row in reader:
                if len(row) < 2 or not row[0].strip() or not row[1].strip():
                    skipped["bad_caption_rows"] += 1
                    continue
                captions.setdefault(row[0].strip(), []).append(",".join(row[1:]).strip())
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not captions:
        raise UserError(f"{path}: no usable caption rows")
    return captions


def _read_token_file(path: Path, skipped: Counter) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    for line in lines:
        key, _, caption = line.partition("\t")
        if not line.strip():
            continue
        if not caption.strip() or "#" not in key:
            skipped["bad_caption_rows"] += 1
            continue
        captions.setdefault(key.rsplit("#", 1)[0].strip(), []).append(caption.strip())
    if not captions:
        raise UserError(f"{path}: no usable lines (expected 'name.jpg#N<TAB>caption')")
    return captions


def _assign_splits(
    root: Path, names: list[str], seed: int, val_fraction: float, test_fraction: float
) -> tuple[dict[str, str], str]:
    split_of: dict[str, str] = {}
    for folder in (root, root / "Flickr8k_text"):
        files = {s: folder / f for s, f in _SPLIT_FILES.items() if (folder / f).is_file()}
        if files:
            for split, file in files.items():
                for line in file.read_text(encoding="utf-8").split():
                    # An image listed twice keeps its first split: never an image in two splits.
                    split_of.setdefault(line.strip(), split)
            return split_of, "split files: " + ", ".join(f.name for f in files.values())
    for folder in (root, root / "Flickr8k_text"):
        if (folder / _KARPATHY).is_file():
            data = json.loads((folder / _KARPATHY).read_text(encoding="utf-8"))
            rename = {"train": "train", "restval": "train", "val": "val", "test": "test"}
            for image in data.get("images", []):
                split_of.setdefault(image["filename"], rename.get(image.get("split"), "train"))
            return split_of, _KARPATHY
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(order) * val_fraction)) if len(order) >= 3 else 0
    n_test = max(1, round(len(order) * test_fraction)) if len(order) >= 10 else 0
    for i, name in enumerate(order):
        split_of[name] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return split_of, f"seeded split (seed {seed}, val {val_fraction:g}, test {test_fraction:g})"


def open_image(path: str | os.PathLike[str]):
    """Open any image as an RGB PIL image: EXIF rotation applied, L/LA/P/RGBA/CMYK/I;16 converted."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.draft("RGB", (448, 448))  # JPEG: decode big photos at a reduced size, much faster
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImage(f"{path}: {err}") from None


def _to_rgb(img):
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        # 16-bit data keeps its brightness (65535 -> 255, not stretched to its own peak); 32-bit
        # int/float images have no fixed range: 8- and 16-bit-looking ones are read as such.
        peak = float(arr.max())
        if img.mode.startswith("I;16") or 255 < peak <= 65535:
            scale = 257.0
        else:
            scale = 1.0 if peak <= 255 else peak / 255.0
        img = Image.fromarray((arr / scale).clip(0, 255).astype("uint8"), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))  # transparent parts become white
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").split()[-1])
        return background
    return img.convert("RGB")
