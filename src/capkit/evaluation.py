"""Evaluate captioners on a dataset split: metrics, predictions figure, comparison table.

`evaluate(model, dataset)` captions every image of a split and scores the captions against all
references (`capkit.metrics`), writing `eval.json` (metrics + every prediction) and
`predictions.png` (5 images with generated and reference captions). `compare(...)` does that for
several models × decodings over the same images, sharing the encoder features, the Java METEOR
start-up and the output folder, and returns the rows of one table (`results_table`).

A model is a run folder, `default` (the shipped captioner) or `knn` (the retrieval baseline,
built from the dataset's train split), or an already loaded captioner object.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapt import console
from adapt.errors import UserError
from adapt.runio import check_positive, write_json, write_text
from capkit.captioning import (
    NAMED_CAPTIONERS,
    CaptionModel,
    Decoding,
    decoding_with,
    load_model,
    model_label,
    preferred_decoding,
)
from capkit.metrics import METRIC_NAMES, compute_metrics

TABLE_KEYS = ["coco_bleu1", "coco_bleu2", "coco_bleu3", "coco_bleu4", "bleu4", "meteor", "rouge_l", "cider_d"]


def _resolve(
    spec: Any, dataset_path: str | os.PathLike[str], split: str, cache_dir: Any
) -> tuple[str, CaptionModel]:
    """(label, loaded model) for a name, a run folder or an already loaded model."""
    if not isinstance(spec, (str, os.PathLike)):
        return getattr(spec, "name", None) or model_label(getattr(spec, "path", "model")), spec
    if str(spec) in NAMED_CAPTIONERS:
        return str(spec), load_model(spec, dataset_path, split, cache_dir)
    try:
        return model_label(spec), load_model(spec)
    except UserError as err:
        raise UserError(f"RUN {err}; each RUN is a caption-train run folder, `default` or `knn`") from None


def _split_records(dataset_path: str | os.PathLike[str], split: str, limit: int | None) -> list:
    from capkit.data import SPLITS, load_dataset

    if split not in SPLITS:
        raise UserError(f"--split: unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    records = load_dataset(dataset_path).split(split)
    if not records:
        raise UserError(f"{dataset_path}: the {split} split has no images")
    return records[:limit] if limit else records


def _features(encoder_name: str, records: list, cache_dir: Any, store: dict) -> tuple[Any, Any, list]:
    """Pooled + grid features of `records` for one encoder (computed once per encoder)."""
    if encoder_name not in store:
        from capkit.encoders import load_encoder
        from capkit.features import extract_features

        feats = extract_features(load_encoder(encoder_name), [r.image for r in records], cache_dir=cache_dir)
        failed = set(feats["failed"])
        keep = [i for i in range(len(records)) if i not in failed]
        store[encoder_name] = (feats["pooled"][keep], feats["grid"][keep], [records[i] for i in keep])
    return store[encoder_name]


def _caption_all(
    model: CaptionModel, pooled: Any, grid: Any, decoding: Decoding, batch_size: int = 64
) -> list[str]:
    captions: list[str] = []
    for start in range(0, len(pooled), batch_size):
        end = start + batch_size
        captions += model.caption_features(pooled[start:end], grid[start:end], decoding)
    return captions


def compare(
    models: Sequence[Any],
    dataset_path: str | os.PathLike[str],
    split: str = "val",
    decodings: Sequence[Decoding] = (Decoding(),),
    out: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    meteor: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate every model with every decoding on the same images (a model that does not decode,
    knn, once, its row labelled `retrieval`).

    Each result is written to `out/<label>-<decoding>/` (eval.json, predictions.png) when `out`
    is given, and `out/comparison.json` + `out/summary.md` hold the table.
    """
    records = _split_records(dataset_path, split, limit)
    # Every model is loaded before any work, so a bad RUN fails at once, not after the others ran.
    resolved = [_resolve(spec, dataset_path, split, cache_dir) for spec in models]
    store: dict[str, Any] = {}
    results = []
    for label, model in resolved:
        pooled, grid, kept = _features(model.encoder_name, records, cache_dir, store)
        for decoding in decodings if model.uses_decoding else decodings[:1]:
            result = {
                "model": label,
                "decoding": decoding.label if model.uses_decoding else "retrieval",
                "decoding_config": decoding.to_dict() if model.uses_decoding else None,
                "dataset": str(dataset_path),
                "split": split,
                "images": len(kept),
                "skipped_images": len(records) - len(kept),
                **_captions_and_scores(model, decoding, pooled, grid, kept, meteor),
            }
            if out is not None:
                _write_result(Path(out) / f"{label}-{result['decoding']}", result)
            results.append(result)
    if out is not None:
        _write_comparison(Path(out), results)
    return results


def _captions_and_scores(
    model: CaptionModel, decoding: Decoding, pooled: Any, grid: Any, kept: list, meteor: bool
) -> dict[str, Any]:
    """`model`'s captions of the encoded images `kept`, how long they took and their scores."""
    import torch

    started = time.perf_counter()
    with torch.inference_mode():
        captions = _caption_all(model, pooled, grid, decoding)
    seconds = time.perf_counter() - started
    scores = compute_metrics(captions, [r.captions for r in kept], meteor=meteor)
    return {
        "caption_seconds": round(seconds, 2),
        "metrics": {k: scores[k] for k in METRIC_NAMES},
        "notes": scores["notes"],
        "predictions": [
            {"image": str(r.image), "caption": c, "references": r.captions}
            for r, c in zip(kept, captions, strict=True)
        ],
    }


def compare_and_report(
    items: Sequence[str],
    split: str = "val",
    strategies: Sequence[str] | None = None,
    beam_size: int = 3,
    no_repeat_ngram: int | None = None,
    length_penalty: float = 1.0,
    out: str | os.PathLike[str] = "caption-eval",
    limit: int | None = None,
    meteor: bool = True,
) -> list[dict[str, Any]]:
    """`adapt caption-eval RUN [RUN...] PATH`: `compare` every RUN with every strategy (default
    greedy) on PATH, the table on stdout, notes and the files written on stderr."""
    from rich.console import Console

    if len(items) < 2:
        raise UserError(
            "caption-eval needs at least one RUN (a run folder, `default` or `knn`) and then the dataset PATH"
        )
    *models, dataset = items
    check_positive("--limit", limit)
    decodings = [
        decoding_with(Decoding(), name, beam_size, no_repeat_ngram, length_penalty=length_penalty)
        for name in dict.fromkeys(strategies or ["greedy"])
    ]
    results = compare(models, dataset, split=split, decodings=decodings, out=out, limit=limit, meteor=meteor)
    settings = {
        "command": "caption-eval", "models": list(models), "dataset": str(dataset), "split": split,
        "decodings": [d.to_dict() for d in decodings], "limit": limit, "meteor": meteor,
    }  # fmt: skip
    write_json(Path(out) / "config.json", settings)
    stdout = Console()
    # Piped output defaults to 80 columns, too narrow for ten columns of scores.
    (stdout if stdout.is_terminal else Console(width=140)).print(results_table(results))
    for note in sorted({n for r in results for n in r["notes"]}):
        console.say(f"note: {note}")
    console.say(f"written: {out}/comparison.json, {out}/summary.md, {out}/compare.png, {out}/config.json")
    return results


def evaluate(
    model: Any,
    dataset_path: str | os.PathLike[str],
    split: str = "val",
    decoding: Decoding | None = None,
    out: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    meteor: bool = True,
) -> dict[str, Any]:
    """Evaluate one model (run folder, `default`, `knn` or a loaded captioner) on one split.

    `decoding=None` uses the model's preferred decoding (greedy unless its folder says otherwise).
    Writes eval.json and predictions.png into `out` (default: `<run>/eval-<split>-<decoding>`
    for a run folder, required otherwise).
    """
    label, loaded = _resolve(model, dataset_path, split, None)
    decoding = decoding or preferred_decoding(loaded)
    if out is None:
        if not isinstance(model, (str, os.PathLike)) or str(model) in NAMED_CAPTIONERS:
            raise UserError("evaluate: pass out= (a folder for eval.json and predictions.png)")
        out = Path(model) / f"eval-{split}-{decoding.label}"
    result = compare([loaded], dataset_path, split, [decoding], out=None, limit=limit, meteor=meteor)[0]
    result["model"] = label
    _write_result(Path(out), result)
    return result


def _write_result(folder: Path, result: dict[str, Any]) -> None:
    from capkit.plots import images_with_captions

    write_json(folder / "eval.json", result)
    predictions = result["predictions"]
    # Five images spread over the split (deterministic, so runs show the same images).
    picks = (
        [predictions[round(i * (len(predictions) - 1) / 4)] for i in range(5)]
        if len(predictions) >= 5
        else predictions
    )
    items = [(p["image"], [f"» {p['caption']}", *[f"- {r}" for r in p["references"]]]) for p in picks]
    images_with_captions(
        folder / "predictions.png", items, f"{result['model']} ({result['decoding']}) on {result['split']}"
    )


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """The comparison as a Markdown table (×100 scores)."""
    header = ["model", "decoding", *[METRIC_NAMES[k] for k in TABLE_KEYS]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [r["model"], r["decoding"], *[_fmt(r["metrics"][k]) for k in TABLE_KEYS]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_table(results: Sequence[dict[str, Any]]):
    """A Rich table of the comparison; the best value of each column in bold."""
    from rich.table import Table

    first = results[0] if results else {}
    table = Table(
        title=f"captions on {first.get('split', '?')} ({first.get('images', 0)} images, scores ×100)"
    )
    table.add_column("model")
    table.add_column("decoding")
    best = {
        k: max((r["metrics"][k] for r in results if r["metrics"][k] is not None), default=None)
        for k in TABLE_KEYS
    }
    for k in TABLE_KEYS:
        table.add_column(METRIC_NAMES[k].replace("COCO ", ""), justify="right")
    for r in results:
        cells = []
        for k in TABLE_KEYS:
            value = r["metrics"][k]
            text = _fmt(value)
            cells.append(
                f"[bold]{text}[/bold]"
                if value is not None and len(results) > 1 and value == best[k]
                else text
            )
        table.add_row(r["model"], r["decoding"], *cells)
    table.caption = "BLEU-1..4: COCO-caption toolkit (as published tables); BLEU-4*: sacrebleu"
    table.columns[2 + TABLE_KEYS.index("bleu4")].header = "BLEU-4*"
    return table


def _write_comparison(folder: Path, results: Sequence[dict[str, Any]]) -> None:
    """`comparison.json`, `summary.md` and `compare.png` (the scores as grouped bars) in `folder`."""
    from capkit.plots import comparison_chart

    summary = [{k: v for k, v in r.items() if k != "predictions"} for r in results]
    write_json(folder / "comparison.json", summary)
    comparison_chart(folder / "compare.png", results, TABLE_KEYS)
    notes = sorted({n for r in results for n in r["notes"]})
    first = results[0]
    text = [
        f"# Caption evaluation on {first['dataset']} ({first['split']}, {first['images']} images)",
        "",
        "Scores ×100. BLEU-1..4 from the COCO-caption toolkit (PTB tokenizer), the protocol of published",
        "tables; BLEU-4 (sacrebleu) on the same tokens for reference.",
        "",
        markdown_table(results).replace("| BLEU-4 |", "| BLEU-4 (sacrebleu) |"),
        "",
        *[f"- note: {n}" for n in notes],
        "Per model: `<model>-<decoding>/eval.json` (every prediction) and `predictions.png`; the scores",
        "as bars: `compare.png`.",
    ]
    write_text(folder / "summary.md", "\n".join(text) + "\n")
