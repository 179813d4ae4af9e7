"""`adapt` commands of capkit: thin wrappers over the library API (filled in per issue)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adapt.commands import command


def caption_train(
    path: Annotated[
        Path,
        typer.Argument(help="Dataset folder: Flickr8k (Kaggle or original layout) or images + captions.csv."),
    ],
    decoder: Annotated[str, typer.Option(help="Decoder: lstm, attention or transformer.")] = "attention",
    encoder: Annotated[
        str,
        typer.Option(
            help="Image encoder: efficientnet_lite0, efficientnet_b0, any torchvision model, or NAME=weights.pth."
        ),
    ] = "efficientnet_lite0",
    epochs: Annotated[int, typer.Option(help="Maximum epochs (early stopping may end sooner).")] = 12,
    batch_size: Annotated[int, typer.Option(help="Captions per batch (per process).")] = 64,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default depends on the decoder).")] = None,
    output: Annotated[
        Path | None, typer.Option(help="Run folder (default runs/caption-DECODER-TIME).")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the stopped run in --output from its last checkpoint.")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace a previous capkit run in --output (never other files; without it such a folder is refused).",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed (split, initialisation, batch order).")] = 0,
    patience: Annotated[
        int, typer.Option(help="Stop after this many epochs without a better validation loss.")
    ] = 3,
    min_count: Annotated[
        int, typer.Option(help="Keep words seen at least this often in training captions.")
    ] = 3,
    max_length: Annotated[
        int, typer.Option(help="Longest caption in words; longer ones are truncated.")
    ] = 25,
) -> None:
    """Train a caption decoder on frozen encoder features; writes one run folder."""
    import signal

    from capkit.training import TrainConfig, train

    cfg = TrainConfig(
        data=str(path),
        decoder=decoder,
        encoder=encoder,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        output=str(output) if output else None,
        seed=seed,
        patience=patience,
        min_count=min_count,
        max_length=max_length,
    )
    # A SIGTERM (a scheduler stopping the job) is handled like Ctrl-C: checkpoint kept, resume hint
    # printed. The old handler comes back afterwards (this function may run inside a longer process).
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        out = train(cfg, resume=resume, overwrite=overwrite)
    finally:
        signal.signal(signal.SIGTERM, previous)
    typer.echo(str(out))


def caption_data(
    path: Annotated[Path, typer.Argument(help="Dataset folder (any layout caption-train accepts).")],
    out: Annotated[Path, typer.Option(help="Folder for stats.json and the PNG figures.")] = Path(
        "caption-data"
    ),
    seed: Annotated[int, typer.Option(help="Seed for the split and the random images shown.")] = 0,
) -> None:
    """Dataset statistics and figures: 5 random images with captions, caption lengths, frequent words."""
    import json

    from capkit.plots import caption_data_report

    report = caption_data_report(path, out, seed)
    typer.echo(json.dumps(report["stats"], indent=2))
    for f in report["files"]:
        typer.echo(f)


def _decoding_for(
    model,
    strategy: str | None,
    beam_size: int | None,
    no_repeat_ngram: int | None,
    max_len: int | None = None,
):
    """The model's preferred decoding with the flags the user gave laid over it."""
    from dataclasses import replace

    from adapt.runio import check_choice, check_positive
    from capkit.captioning import preferred_decoding
    from capkit.decoding import STRATEGIES

    base = preferred_decoding(model)
    if strategy is not None:
        check_choice("--decoding", strategy, list(STRATEGIES))
        if strategy != base.strategy:
            base = replace(base, strategy=strategy, no_repeat_ngram=None)
    check_positive("--beam-size", beam_size)
    check_positive("--no-repeat-ngram", no_repeat_ngram, allow_zero=True)
    check_positive("--max-len", max_len)
    changes = {"beam_size": beam_size, "no_repeat_ngram": no_repeat_ngram, "max_len": max_len}
    return replace(base, **{k: v for k, v in changes.items() if v is not None})


def _load_model_flag(model: str | None):
    """`--model`: the shipped captioner or a caption-train run folder; anything else names the flag."""
    from adapt.errors import UserError
    from capkit.captioning import load_model

    try:
        return load_model(model)
    except UserError as err:
        named = str(err).startswith(str(model))  # "--model FOLDER: what is wrong with it"
        raise UserError(
            f"--model{' ' if named else ': '}{err}; expected a run folder written by caption-train, or `default`"
        ) from None


def caption(
    images: Annotated[
        list[str],
        typer.Argument(help="Image files, folders of images, or glob patterns.", show_default=False),
    ],
    model: Annotated[
        str | None,
        typer.Option(help="Run folder of caption-train (default: the captioner shipped with capkit)."),
    ] = None,
    decoding: Annotated[
        str | None,
        typer.Option(help="greedy, no-repeat or beam (default: what the model was validated with)."),
    ] = None,
    beam_size: Annotated[int | None, typer.Option(help="Beams for --decoding beam.")] = None,
    no_repeat_ngram: Annotated[
        int | None, typer.Option(help="Never repeat an n-gram of this size (0: off; no-repeat uses 1).")
    ] = None,
    max_len: Annotated[
        int | None, typer.Option(help="Longest caption in words (default: the model's).")
    ] = None,
    attention_map: Annotated[
        Path | None,
        typer.Option(
            help="Draw per-word attention to this PNG (attention decoder; one file per image when several)."
        ),
    ] = None,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print a JSON list of {image, caption} (unreadable images: caption null and an error).",
        ),
    ] = False,
) -> None:
    """Caption images: one line per image (just the caption when there is one image); unreadable ones among several are skipped and counted."""
    import json

    from adapt.errors import UserError
    from capkit.captioning import caption_images, draw_attention_map, expand_images

    paths = expand_images(images)
    if len(paths) <= 8:
        import torch

        # A few images are little work: a second intra-op thread mostly spins, and on a busy
        # machine it makes one caption take seconds instead of a fraction of one.
        torch.set_num_threads(1)
    loaded = _load_model_flag(model)
    chosen = _decoding_for(loaded, decoding, beam_size, no_repeat_ngram, max_len)
    # One named image that cannot be read is an error; among several, it is skipped and counted.
    results = caption_images(loaded, paths, chosen, skip_unreadable=len(paths) > 1)
    skipped = [r for r in results if r.error]
    if skipped:
        typer.echo(f"skipped {len(skipped)} unreadable image(s) of {len(results)}:", err=True)
        for r in skipped:
            typer.echo(f"  {r.error}", err=True)
        if len(skipped) == len(results):
            raise UserError(f"none of the {len(results)} images could be read (first: {skipped[0].error})")
    captioned = [r for r in results if not r.error]
    if attention_map is not None:
        for r in captioned:
            target = (
                attention_map
                if len(paths) == 1
                else attention_map.with_name(f"{attention_map.stem}-{r.image.stem}.png")
            )
            try:
                drawn = draw_attention_map(loaded, r.image, r.caption, target)
            except OSError as err:
                raise UserError(f"--attention-map {target}: cannot write ({err.strerror or err})") from None
            typer.echo(f"attention map: {drawn}", err=True)
    if json_output:
        rows = [
            {"image": str(r.image), "caption": r.caption, **({"error": r.error} if r.error else {})}
            for r in results
        ]
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
    elif len(paths) == 1:
        typer.echo(results[0].caption)
    else:
        for r in captioned:
            typer.echo(f"{r.image}\t{r.caption}")
    _exit_without_teardown()


def _exit_without_teardown() -> None:
    """End the `adapt` process now, skipping Python's shutdown, when it is the program running.

    With torch loaded, interpreter teardown takes about 0.9 s on the project's 2-core machine
    (measured: 0.89 s from the last statement to process exit, 0.05 s with `os._exit`) — more
    than loading the captioner and captioning a photo. Nothing is left to clean up here: output
    is flushed and every file is written and renamed. Never inside tests (CliRunner swaps
    stdout) or someone else's Python process.
    """
    import os
    import sys

    main = sys.modules.get("__main__")
    running_adapt = Path(sys.argv[0]).name == "adapt" or getattr(main, "__package__", None) == "adapt"
    if running_adapt and sys.stdout is sys.__stdout__ and sys.stderr is sys.__stderr__:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def caption_eval(
    items: Annotated[
        list[str],
        typer.Argument(
            help="RUN [RUN...] PATH: run folders, `default` or `knn`, then the dataset folder.",
            show_default=False,
        ),
    ],
    split: Annotated[str, typer.Option(help="Split to evaluate on: train, val or test.")] = "val",
    decoding: Annotated[
        list[str] | None,
        typer.Option(help="greedy, no-repeat or beam; repeat to compare several (default greedy)."),
    ] = None,
    beam_size: Annotated[int, typer.Option(help="Beams for --decoding beam.")] = 3,
    no_repeat_ngram: Annotated[
        int | None, typer.Option(help="Ban repeated n-grams of this size (0: off; no-repeat uses 1).")
    ] = None,
    length_penalty: Annotated[
        float, typer.Option(help="Beam: rank finished captions by log-prob / length**this.")
    ] = 1.0,
    out: Annotated[
        Path,
        typer.Option(
            help="Folder for comparison.json, summary.md and one eval.json + predictions.png per model."
        ),
    ] = Path("caption-eval"),
    limit: Annotated[int | None, typer.Option(help="Only the first N images of the split.")] = None,
    meteor: Annotated[bool, typer.Option(help="Compute METEOR (starts Java; ~20 s).")] = True,
) -> None:
    """Score captioners on a dataset split (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) and compare them in one table."""
    from rich.console import Console

    from adapt.errors import UserError
    from adapt.runio import check_choice, check_positive
    from capkit.captioning import Decoding
    from capkit.decoding import STRATEGIES
    from capkit.evaluation import compare, results_table

    if len(items) < 2:
        raise UserError(
            "caption-eval needs at least one RUN (a run folder, `default` or `knn`) and then the dataset PATH"
        )
    *models, dataset = items
    check_positive("--beam-size", beam_size)
    check_positive("--no-repeat-ngram", no_repeat_ngram, allow_zero=True)
    check_positive("--limit", limit)
    for name in decoding or []:
        check_choice("--decoding", name, list(STRATEGIES))
    decodings = [
        Decoding(
            strategy=name, beam_size=beam_size, no_repeat_ngram=no_repeat_ngram, length_penalty=length_penalty
        )
        for name in dict.fromkeys(decoding or ["greedy"])
    ]
    results = compare(models, dataset, split=split, decodings=decodings, out=out, limit=limit, meteor=meteor)
    console = Console()
    # Piped output defaults to 80 columns, too narrow for ten columns of scores.
    (console if console.is_terminal else Console(width=140)).print(results_table(results))
    for note in sorted({n for r in results for n in r["notes"]}):
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"written: {out}/comparison.json, {out}/summary.md", err=True)


def register(app: typer.Typer) -> None:
    """Add this package's commands to the root `adapt` app."""
    command(
        app,
        caption_train,
        name="caption-train",
        help="Train an image captioner (lstm / attention / transformer decoder).",
    )
    command(app, caption_data, name="caption-data", help="Statistics and plots of a captioning dataset.")
    command(app, caption, name="caption", help="Caption images (default: the captioner shipped with capkit).")
    command(
        app,
        caption_eval,
        name="caption-eval",
        help="Evaluate and compare captioners (runs, default, knn) on a dataset split.",
    )
