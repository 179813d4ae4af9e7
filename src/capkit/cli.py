"""`adapt` commands of capkit: each parses its arguments and calls one library function.

caption-train's options are generated from `TrainConfig`'s fields (`adapt.settings`); nothing here
imports torch, so `adapt --help` stays fast.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated

import typer

from adapt.commands import command
from adapt.settings import build_command
from capkit.train_config import DATA_HELP, TrainConfig, train_config_from


def caption_train(
    path: Path, *, resume: bool, overwrite: bool, config: Path | None, **flags: str | None
) -> None:
    """Train a caption decoder on frozen encoder features; writes one run folder. Its options are
    `TrainConfig`'s fields (`register`), given as text and checked by `train_config_from`."""
    from capkit.training import train

    typer.echo(str(train(train_config_from(path, flags, config), resume=resume, overwrite=overwrite)))


def _train_parameters() -> tuple[list[inspect.Parameter], list[inspect.Parameter]]:
    """caption-train's parameters that are no setting of the run: PATH before the settings' flags,
    the switches and --config after them."""

    def option(name: str, default: object, annotation: object) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)

    path = inspect.Parameter(
        "path",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        annotation=Annotated[Path, typer.Argument(help=DATA_HELP, show_default=False)],
    )
    resume = Annotated[
        bool, typer.Option(help="Continue the stopped run in --output from its last checkpoint.")
    ]
    overwrite = Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace a previous capkit run in --output (never other files; without it such a folder is refused).",
        ),
    ]
    config = Annotated[
        Path | None,
        typer.Option(
            help="YAML file of settings (keys as the flags are named; decoder_config too); flags override it."
        ),
    ]
    return [path], [
        option("resume", False, resume),
        option("overwrite", False, overwrite),
        option("config", None, config),
    ]


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
    from capkit.caption_files import caption_files

    typer.echo(
        caption_files(
            images, model, decoding, beam_size, no_repeat_ngram, max_len, attention_map, as_json=json_output
        )
    )
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
            help="Folder for comparison.json, summary.md, compare.png and one eval.json + predictions.png per model."
        ),
    ] = Path("caption-eval"),
    limit: Annotated[int | None, typer.Option(help="Only the first N images of the split.")] = None,
    meteor: Annotated[bool, typer.Option(help="Compute METEOR (starts Java; ~20 s).")] = True,
) -> None:
    """Score captioners on a dataset split (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) and compare them in one table."""
    from capkit.evaluation import compare_and_report

    compare_and_report(items, split, decoding, beam_size, no_repeat_ngram, length_penalty, out, limit, meteor)


def caption_ensemble(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Two or more finished caption-train run folders (same encoder and vocabulary).",
            show_default=False,
        ),
    ],
    output: Annotated[Path, typer.Option(help="Folder for the ensemble (a run folder like any other).")],
    overwrite: Annotated[bool, typer.Option(help="Replace an ensemble or run already in --output.")] = False,
    decoding_from: Annotated[
        Path | None,
        typer.Option(
            help="Keep this folder's decoding.json (the decoding a model is used with), e.g. the shipped default's."
        ),
    ] = None,
    half: Annotated[bool, typer.Option(help="Store the weights as float16 (half the size).")] = False,
) -> None:
    """Join finished runs into one captioner that averages their word probabilities at every step."""
    from capkit.ensemble import make_ensemble

    typer.echo(str(make_ensemble(runs, output, overwrite=overwrite, decoding_from=decoding_from, half=half)))


def register(app: typer.Typer) -> None:
    """Add this package's commands to the root `adapt` app."""
    before, after = _train_parameters()
    train_command, train_options = build_command(caption_train, TrainConfig, before=before, after=after)
    command(
        app,
        train_command,
        name="caption-train",
        help="Train an image captioner (lstm / attention / transformer decoder).",
        **train_options,
    )
    command(
        app,
        caption_ensemble,
        name="caption-ensemble",
        help="Join finished caption-train runs into one captioner (their word probabilities averaged).",
    )
    command(app, caption_data, name="caption-data", help="Statistics and plots of a captioning dataset.")
    command(app, caption, name="caption", help="Caption images (default: the captioner shipped with capkit).")
    command(
        app,
        caption_eval,
        name="caption-eval",
        help="Evaluate and compare captioners (runs, default, knn) on a dataset split.",
    )
