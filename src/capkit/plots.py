"""The figures: images with captions, caption lengths, frequent words, the models compared (all PNG, atomic)."""

from __future__ import annotations

import math
import os
import random
import textwrap
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def comparison_chart(
    path: str | os.PathLike[str], results: Sequence[dict[str, Any]], keys: Sequence[str]
) -> Path:
    """Grouped bars, one group per metric and one bar per result row (model and decoding): the
    metrics in `keys` on the left, CIDEr-D on its own axis on the right (it is not bounded by 100,
    so on one scale it would flatten the others). A metric no row has (METEOR without Java) is left
    out and named in the title."""
    from capkit.metrics import METRIC_NAMES

    plt = _pyplot()
    present = [k for k in keys if any(r["metrics"].get(k) is not None for r in results)]
    panels = [
        p for p in ([k for k in present if k != "cider_d"], [k for k in present if k == "cider_d"]) if p
    ]
    panels = panels or [[]]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(11, 4.5),
        dpi=100,
        squeeze=False,
        gridspec_kw={"width_ratios": [max(len(p), 1) for p in panels]},
    )
    bar = 0.8 / max(len(results), 1)
    for ax, panel in zip(axes[0], panels, strict=True):
        for i, r in enumerate(results):
            values = [r["metrics"].get(k) for k in panel]
            ax.bar(
                [j - 0.4 + bar * (i + 0.5) for j in range(len(panel))],
                [float("nan") if v is None else v for v in values],  # a missing value: no bar
                bar,
                label=f"{r['model']} ({r['decoding']})",
                color=f"C{i % 10}",
            )
        # two BLEU-4s: the COCO one (as published) and sacrebleu's, told apart
        names = {**METRIC_NAMES, "bleu4": "BLEU-4\n(sacrebleu)"}
        ax.set_xticks(range(len(panel)), [names[k].replace("COCO ", "") for k in panel], fontsize=8)
        ax.set_ylabel("score ×100")
        ax.grid(axis="y", alpha=0.3)
        # headroom above the bars for the legend's rows (four labels a row)
        highest = max(
            (v for r in results for k in panel if (v := r["metrics"].get(k)) is not None), default=1
        )
        ax.set_ylim(0, max(highest, 1) * (1.12 + 0.1 * math.ceil(len(results) / 4)))
    missing = [METRIC_NAMES[k] for k in keys if k not in present]
    first = results[0] if results else {}
    title = f"captions on {first.get('split', '?')} ({first.get('images', 0)} images)"
    fig.suptitle(title + (f"; not computed: {', '.join(missing)}" if missing else ""))
    if results:
        axes[0][0].legend(fontsize=8, loc="upper center", ncol=min(len(results), 4))
    return _save(fig, path)
