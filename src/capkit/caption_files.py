"""`adapt caption` as one library call: image files in, the text the command prints out.

The command's policies live here: a few images run on one thread, one unreadable image is an
error but among several it is skipped and counted, each image gets its own attention map file,
and the output is a bare caption, `path<TAB>caption` lines or JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from adapt import console
from adapt.errors import UserError
from capkit.captioning import (
    CaptionModel,
    CaptionResult,
    caption_images,
    decoding_with,
    draw_attention_map,
    expand_images,
    load_model,
    preferred_decoding,
)

FEW_IMAGES = 8  # up to this many images are captioned on one thread (see `_one_thread_for_few`)


def caption_files(
    images: Sequence[str | os.PathLike[str]],
    model: str | None = None,
    strategy: str | None = None,
    beam_size: int | None = None,
    no_repeat_ngram: int | None = None,
    max_len: int | None = None,
    attention_map: str | os.PathLike[str] | None = None,
    as_json: bool = False,
) -> str:
    """Caption `images` (files, folders, glob patterns) as `adapt caption` does; returns what it
    prints on stdout. `model`: a run folder or a name of `NAMED_CAPTIONERS` (default: the shipped
    captioner); the decoding settings given are laid over the model's preferred decoding. Skipped
    images and the attention maps drawn are reported on stderr."""
    paths = expand_images(images)
    _one_thread_for_few(len(paths))
    loaded = _load_model_flag(model)
    decoding = decoding_with(preferred_decoding(loaded), strategy, beam_size, no_repeat_ngram, max_len)
    # One named image that cannot be read is an error; among several, it is skipped and counted.
    results = caption_images(loaded, paths, decoding, skip_unreadable=len(paths) > 1)
    _report_skipped(results)
    if attention_map is not None:
        captioned = [r for r in results if not r.error]
        _draw_attention_maps(loaded, captioned, Path(attention_map), one_image=len(paths) == 1)
    return format_results(results, as_json=as_json, one_image=len(paths) == 1)


def _one_thread_for_few(images: int) -> None:
    if images <= FEW_IMAGES:
        import torch

        # A few images are little work: a second intra-op thread mostly spins, and on a busy
        # machine it makes one caption take seconds instead of a fraction of one.
        torch.set_num_threads(1)


def _load_model_flag(model: str | None) -> CaptionModel:
    """`--model`: the shipped captioner or a caption-train run folder; anything else names the flag."""
    try:
        return load_model(model)
    except UserError as err:
        named = str(err).startswith(str(model))  # "FOLDER: what is wrong with it"
        raise UserError(
            f"--model{' ' if named else ': '}{err}; expected a run folder written by caption-train, or `default`"
        ) from None


def _report_skipped(results: Sequence[CaptionResult]) -> None:
    """Say which images could not be read; a `UserError` when none could."""
    skipped = [r for r in results if r.error]
    if not skipped:
        return
    console.say(f"skipped {len(skipped)} unreadable image(s) of {len(results)}:")
    for r in skipped:
        console.say(f"  {r.error}")
    if len(skipped) == len(results):
        raise UserError(f"none of the {len(results)} images could be read (first: {skipped[0].error})")


def _draw_attention_maps(
    model: CaptionModel, captioned: Sequence[CaptionResult], target: Path, one_image: bool
) -> None:
    """`target` for one image; for several, one file each, named `<target stem>-<image stem>.png`."""
    for r in captioned:
        path = target if one_image else target.with_name(f"{target.stem}-{r.image.stem}.png")
        try:
            drawn = draw_attention_map(model, r.image, r.caption, path)
        except OSError as err:
            raise UserError(f"--attention-map {path}: cannot write ({err.strerror or err})") from None
        console.say(f"attention map: {drawn}")


def format_results(results: Sequence[CaptionResult], as_json: bool = False, one_image: bool = False) -> str:
    """The command's output: a JSON list of {image, caption} (unreadable images: caption null and
    an error), the bare caption of `one_image`, or a `path<TAB>caption` line per captioned image."""
    if as_json:
        rows = [
            {"image": str(r.image), "caption": r.caption, **({"error": r.error} if r.error else {})}
            for r in results
        ]
        return json.dumps(rows, indent=2, ensure_ascii=False)
    if one_image:
        return str(results[0].caption)
    return "\n".join(f"{r.image}\t{r.caption}" for r in results if not r.error)
