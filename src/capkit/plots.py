"""The source's figures: images with captions, caption lengths, frequent words (all PNG, atomic)."""

from __future__ import annotations

import os
import random
import textwrap
from collections import Counter
from pathlib import Path

from adapt.runio import atomic_path, write_json
from capkit.data import BadImage, CaptionDataset, load_dataset, open_image
from capkit.vocab import clean_caption


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike[str]) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def images_with_captions(
    path: str | os.PathLike[str], items: list[tuple[str | Path, list[str]]], title: str
) -> Path:
    """One column per image, its captions wrapped underneath."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, max(len(items), 1), figsize=(3.6 * max(len(items), 1), 5.2), dpi=100, squeeze=False
    )
    for ax, (image, captions) in zip(axes[0], items, strict=False):
        try:
            ax.imshow(open_image(image))
        except BadImage:
            ax.text(0.5, 0.5, "unreadable image", ha="center")
        ax.set_axis_off()
        text = "\n".join(textwrap.fill(c, 38) for c in captions)
        ax.set_title(text, fontsize=7.5, loc="left", y=-0.02, va="top")
    fig.suptitle(title)
    fig.subplots_adjust(bottom=0.35)
    return _save(fig, path)


def samples_figure(path: str | os.PathLike[str], samples: list[dict], title: str) -> Path:
    """Generated captions (bold first line) with one reference each."""
    items = [(s["image"], [f"» {s['generated']}", f"ref: {s['references'][0]}"]) for s in samples]
    return images_with_captions(path, items, title)


def caption_length_scatter(path: str | os.PathLike[str], dataset: CaptionDataset) -> Path:
    plt = _pyplot()
    lengths = [len(clean_caption(c).split()) for r in dataset.records for c in r.captions]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.scatter(range(len(lengths)), lengths, s=3, alpha=0.4)
    ax.set_xlabel("caption index")
    ax.set_ylabel("words")
    ax.set_title(
        f"caption lengths (mean {sum(lengths) / max(len(lengths), 1):.1f}, max {max(lengths, default=0)})"
    )
    return _save(fig, path)


def word_histogram(path: str | os.PathLike[str], dataset: CaptionDataset, top: int = 30) -> Path:
    plt = _pyplot()
    counts = Counter(w for r in dataset.records for c in r.captions for w in clean_caption(c).split())
    words, freqs = zip(*counts.most_common(top), strict=True) if counts else ((), ())
    fig, ax = plt.subplots(figsize=(9, 4), dpi=100)
    ax.bar(range(len(words)), freqs)
    ax.set_xticks(range(len(words)), words, rotation=70, fontsize=8)
    ax.set_ylabel("count")
    ax.set_title(f"{top} most frequent words ({len(counts)} distinct)")
    return _save(fig, path)


def caption_data_report(path: str | os.PathLike[str], out: str | os.PathLike[str], seed: int = 0) -> dict:
    """Statistics (stats.json) and the three figures of a dataset, written to `out`."""
    dataset = load_dataset(path, seed=seed)
    out = Path(out)
    picked = random.Random(seed).sample(dataset.records, min(5, len(dataset.records)))
    files = [
        images_with_captions(
            out / "random_images.png",
            [(r.image, r.captions) for r in picked],
            "5 random images with their captions",
        ),
        caption_length_scatter(out / "caption_lengths.png", dataset),
        word_histogram(out / "word_frequencies.png", dataset),
    ]
    stats = dataset.stats()
    stats["distinct_words"] = len(
        {w for r in dataset.records for c in r.captions for w in clean_caption(c).split()}
    )
    write_json(out / "stats.json", stats)
    return {"stats": stats, "files": [str(f) for f in [*files, out / "stats.json"]]}
