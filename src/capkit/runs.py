"""Run folders: what a training run writes and `load_captioner` reads back.

A run folder holds `decoder.safetensors` (best weights), `word_to_id.json`, `config.json`,
`metrics.json`, `loss.png`, `samples.png`, `summary.md`, `README.md`, after self-critical training
`reward.png`, and, while training, `checkpoint.pt`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from adapt.errors import UserError
from adapt.runio import atomic_path, plot_curves, read_json, write_json, write_text
from capkit.vocab import Vocab

if TYPE_CHECKING:
    import torch

    from capkit.captioning import Decoding
    from capkit.checkpoints import TrainState
    from capkit.train_config import TrainConfig

WEIGHTS, VOCAB, CONFIG, METRICS = "decoder.safetensors", "word_to_id.json", "config.json", "metrics.json"
CHECKPOINT = "checkpoint.pt"  # while training: what `--resume` continues from (`capkit.checkpoints`)
# what a capkit run writes into its folder: `caption-train --overwrite` deletes these and nothing else
RUN_ENTRIES = frozenset(
    {
        WEIGHTS,
        VOCAB,
        CONFIG,
        METRICS,
        "loss.png",
        "reward.png",
        "samples.png",
        "summary.md",
        "README.md",
        CHECKPOINT,
        "decoding.json",  # the decoding a model is best used with (the shipped default, an ensemble)
    }
)


def is_run_folder(folder: Path) -> bool:
    """True when `folder` holds a capkit run, finished (weights) or stopped (checkpoint)."""
    return (folder / WEIGHTS).is_file() or (folder / CHECKPOINT).is_file()


def save_run(
    out: Path,
    cfg: TrainConfig,
    vocab: Vocab,
    decoder: Any,
    state: TrainState,
    data_counts: dict[str, Any],
    samples: list[dict[str, Any]],
    feature_dim: int | None = None,
    scst: dict[str, Any] | None = None,
) -> None:
    """Write the final run folder (main process only), every file atomically.

    `scst`: the self-critical phase's metrics (`capkit.scst.scst_metrics`), when it ran: they go
    into metrics.json under "scst" and its curves into `reward.png`.

    `feature_dim` (the encoder's) is stored with the weights, so any decoder, a plug-in's too,
    is rebuilt at its size by `load_captioner`.

    `config.json` marks a complete run: it is removed first and written last, so a kill at any
    moment leaves either the previous complete run, an unfinished one (`load_captioner` says so,
    and `--resume` finishes it from `checkpoint.pt`), or the new complete run, never a mix.
    """
    from safetensors.torch import save_file

    (out / CONFIG).unlink(missing_ok=True)
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(
            {k: v.contiguous() for k, v in decoder.state_dict().items()},
            str(tmp),
            metadata={
                "decoder": cfg.decoder,
                **({"feature_dim": str(feature_dim)} if feature_dim is not None else {}),
            },
        )
    vocab.save(out / VOCAB)
    history = state.history
    metrics = {
        "best_epoch": state.best_epoch,
        "best_val_loss": round(state.best_val, 5),
        "initial_val_loss": state.initial_val_loss,
        "epochs_run": state.epoch,
        "stopped_early": state.epoch < cfg.epochs,
        "train_seconds": round(sum(h["seconds"] for h in history), 1),
        "history": history,
        "data": data_counts,
        "samples": samples,
        **({"scst": scst} if scst else {}),
    }
    write_json(out / METRICS, metrics)
    _write_figures(out, cfg.decoder, metrics)
    write_text(out / "summary.md", _summary(out, cfg, metrics))
    from capkit.model_card import write_run_card

    write_run_card(out, cfg, metrics)
    write_json(out / CONFIG, asdict(cfg))  # last: its presence marks a complete run


def _write_figures(out: Path, decoder: str, metrics: dict[str, Any]) -> None:
    """`loss.png`, `samples.png` and, after self-critical training, `reward.png`."""
    from capkit.plots import samples_figure

    history, scst = metrics["history"], metrics.get("scst")
    if scst:
        _reward_figure(out / "reward.png", scst, decoder)
    else:  # a resumed run never leaves another phase's curve behind
        (out / "reward.png").unlink(missing_ok=True)
    plot_curves(
        out / "loss.png",
        {
            "train": [(h["epoch"], h["train_loss"]) for h in history],
            "validation": [(h["epoch"], h["val_loss"]) for h in history],
        },
        f"{decoder} decoder: loss per epoch",
        xlabel="epoch",
    )
    samples_figure(
        out / "samples.png", metrics["samples"], f"{decoder} decoder on validation images (greedy)"
    )


def _reward_figure(path: Path, scst: dict[str, Any], decoder: str) -> None:
    """`reward.png`: per self-critical epoch, the mean reward of the sampled captions and of the
    greedy ones (training images), and the validation CIDEr-D, from the cross-entropy start (epoch 0)."""
    history = scst["history"]
    plot_curves(
        path,
        {
            "sampled captions, training images (mean reward)": [
                (h["epoch"], h["reward_sampled"]) for h in history
            ],
            "greedy captions, training images (reward)": [(h["epoch"], h["reward_greedy"]) for h in history],
            "validation CIDEr-D (greedy)": [(0, scst["initial_val_cider_d"])]
            + [(h["epoch"], h["val_cider_d"]) for h in history],
        },
        f"{decoder} decoder: self-critical training",
        xlabel="self-critical epoch",
        ylabel="CIDEr-D ×100",
    )


def _summary(out: Path, cfg: TrainConfig, metrics: dict[str, Any]) -> str:
    """`summary.md`: the run in a few lines and its sample captions as a table."""
    data = metrics["data"]
    lines = [
        f"# Caption run: {cfg.decoder} decoder on {cfg.encoder} features",
        "",
        f"- data: `{cfg.data}` ({data['train_examples']} training / {data['val_examples']} validation captions, {data['vocab_size']} words)",
        f"- best validation loss {metrics['best_val_loss']} at epoch {metrics['best_epoch']} of {metrics['epochs_run']} (untrained: {metrics['initial_val_loss']})",
        f"- training time {metrics['train_seconds']} s; skipped: {data['skipped'] or 'nothing'}, unreadable images {data['corrupt_images']}",
        *_scst_lines(metrics.get("scst")),
        "",
        "| image | generated | a reference |",
        "|---|---|---|",
        *[
            f"| {Path(s['image']).name} | {s['generated']} | {s['references'][0]} |"
            for s in metrics["samples"]
        ],
        "",
        f"Load it with `capkit.load_captioner({str(out)!r})`.",
    ]
    return "\n".join(lines) + "\n"


def _scst_lines(scst: dict[str, Any] | None) -> list[str]:
    """summary.md's line on self-critical training, when it ran."""
    if not scst:
        return []
    start = f" from `{scst['init_from']}`" if scst["init_from"] else ""
    return [
        f"- self-critical training{start}: validation CIDEr-D {scst['initial_val_cider_d']} → "
        f"{scst['best_val_cider_d']} (epoch {scst['best_epoch']} of {scst['epochs_run']}, kept; "
        f"{scst['train_seconds']} s); see reward.png"
    ]


@dataclass
class Captioner:
    """A trained captioner: decoder (eval mode) + vocabulary + config; the encoder loads on first use."""

    encoder_name: str
    decoder: Any
    vocab: Vocab
    config: dict
    path: Path
    feature_dim: int | None = None  # the encoder's, as stored with the weights (None: not known)
    _encoder: Any = field(default=None, repr=False)
    uses_decoding: ClassVar[bool] = True  # the decoding chosen matters (`capkit.captioning.CaptionModel`)

    @property
    def encoder(self):
        if self._encoder is None:
            from capkit.encoders import load_encoder

            self._encoder = load_encoder(self.encoder_name)
        return self._encoder

    def load_encoder(self):
        return self.encoder

    @property
    def max_length(self) -> int:
        return int(self.config.get("max_length", 25))

    def caption_features(self, pooled: torch.Tensor, grid: torch.Tensor, decoding: Decoding) -> list[str]:
        """Captions of encoded images, decoded as `decoding` says (its `max_len`, else the model's)."""
        from capkit.decoding import decode

        ids = decode(
            self.decoder,
            pooled,
            grid,
            self.vocab,
            strategy=decoding.strategy,
            max_len=decoding.max_len or self.max_length,
            beam_size=decoding.beam_size,
            no_repeat_ngram=decoding.no_repeat_ngram,
            length_penalty=decoding.length_penalty,
        )
        return [self.vocab.decode(row) for row in ids]


def load_captioner(path: str | os.PathLike[str]) -> Captioner:
    """Load a run folder written by `adapt caption-train` (best weights).

    Its decoder is looked up by name in the `capkit.decoders` registry, so a run of a plug-in
    decoder loads once the plug-in is registered (or offered by a `capkit.decoders` entry point).
    """
    from capkit.decoders import build_decoder, find_decoder

    folder = Path(path)
    _check_run_files(folder)
    config = read_json(folder / CONFIG)
    name = config["decoder"]
    if find_decoder(name) is None:
        from capkit import plugins

        raise UserError(f"{folder}: its decoder {name!r} is not registered; {plugins.DECODER.hint(name)}")
    vocab = Vocab.load(folder / VOCAB)
    weights, feature_dim = _read_weights(folder / WEIGHTS)
    decoder = build_decoder(
        name, len(vocab), feature_dim, pad_id=vocab.pad_id, **config.get("decoder_config", {})
    )
    try:
        decoder.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise UserError(
            f"{folder / WEIGHTS}: does not match a {name} decoder ({str(err).splitlines()[0]})"
        ) from None
    return Captioner(config["encoder"], decoder.eval(), vocab, config, folder, feature_dim)


def _check_run_files(folder: Path) -> None:
    """A one-line `UserError` unless `folder` holds a finished run's weights, vocabulary and config."""
    missing = [f for f in (WEIGHTS, VOCAB, CONFIG) if not (folder / f).is_file()]
    if folder.is_dir() and missing and (folder / CHECKPOINT).is_file():
        raise UserError(
            f"{folder}: a caption-train run that has not finished; continue it with the same "
            f"`adapt caption-train` command plus --output {folder} --resume"
        )
    if not folder.is_dir() or missing:
        raise UserError(
            f"{folder}: not a capkit run folder (missing {', '.join(missing) if folder.is_dir() else 'the folder'})"
        )


def _read_weights(file: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The decoder's tensors and the encoder feature size they were trained on: stored beside
    them, or (runs from before it was stored, the shipped default) read off the image projection."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        weights = load_file(file)
        with safe_open(str(file), framework="pt") as fh:
            stored = (fh.metadata() or {}).get("feature_dim")
    except Exception as err:
        raise UserError(f"{file}: cannot be read ({err})") from None
    return weights, int(stored) if stored and stored.isdigit() else _feature_dim(weights)


def _feature_dim(weights: dict) -> int:
    for key, tensor in weights.items():
        if key.endswith("norm.weight") and key.split(".")[0] in ("image", "features"):
            return int(tensor.shape[0])
    raise UserError("decoder weights lack the image projection; not a capkit decoder")


def read_metrics(path: str | os.PathLike[str]) -> dict[str, Any]:
    return read_json(Path(path) / METRICS)
