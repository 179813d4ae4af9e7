"""The model card of a capkit run folder, from the run's own settings and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapt.model_card import table, write_card


def _result_rows(cfg: Any, metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """The card's results table: model, data, vocabulary, losses, epochs, the self-critical phase."""
    data = metrics["data"]
    stopped = " (stopped early)" if metrics["stopped_early"] else ""
    rows = [
        ("decoder / encoder", f"{cfg.decoder} on frozen {cfg.encoder} features"),
        (
            "data",
            f"`{cfg.data}`: {data['train_examples']} training / {data['val_examples']} validation captions",
        ),
        ("vocabulary", f"{data['vocab_size']} words (seen at least {cfg.min_count} times)"),
        (
            "validation loss",
            f"{metrics['initial_val_loss']} untrained → {metrics['best_val_loss']} (epoch {metrics['best_epoch']}, kept)",
        ),
        ("epochs", f"{metrics['epochs_run']} of {cfg.epochs}{stopped}"),
    ]
    scst = metrics.get("scst")
    if scst:  # the weights kept are the self-critical phase's best
        rows.append(
            (
                "self-critical training (validation CIDEr-D, greedy)",
                f"{scst['initial_val_cider_d']} → {scst['best_val_cider_d']} (epoch {scst['best_epoch']} of {scst['epochs_run']}, kept)",
            )
        )
    return rows


def write_run_card(out: Path, cfg: Any, metrics: dict[str, Any]) -> Path:
    """README.md of a caption-train run: decoder, encoder, data, losses, sample captions, use, limits."""
    rows = _result_rows(cfg, metrics)
    scst = metrics.get("scst")
    reward = "\n![reward](reward.png)\n" if scst else ""
    samples = "\n".join(
        f"| {Path(s['image']).name} | {s['generated']} | {s['references'][0]} |" for s in metrics["samples"]
    )
    body = f"""# {out.name}: {cfg.decoder} caption decoder

Trained with `adapt caption-train` (capkit): the image encoder stays frozen, the decoder learns
from cached features.

## Results

{table(rows)}

![loss](loss.png)
{reward}
| image | generated (greedy) | a reference |
|---|---|---|
{samples}

## Use

```python
from capkit.captioning import caption_images, load_model
model = load_model("{out.name}")
print(caption_images(model, ["photo.jpg"])[0].caption)
```

or `adapt caption photo.jpg --model {out.name}`; `adapt caption-eval {out.name} DATASET` scores it.

## Intended use and limits

English captions of everyday photos like those it was trained on (Flickr-style scenes of people and
animals). Trained on a small dataset: expect generic or wrong captions for other images, and the
biases of its training captions. Not for describing people's identity or for accessibility use
without review.
"""
    metadata = {
        "library_name": "capkit",
        "language": ["en"],
        "pipeline_tag": "image-to-text",
        "tags": ["capkit", "image-captioning", cfg.decoder, cfg.encoder],
    }
    return write_card(out, metadata, body)
