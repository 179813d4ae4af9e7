"""`TrainConfig`: every setting of a caption-train run, with its default, its check and its help.

The flags of `adapt caption-train` are generated from these fields (`adapt.settings`), and a YAML
`--config` file, the API and the `--resume` hint all go through them, so each default and each
check is written once. Kept free of torch: `adapt --help` builds the command from this module.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapt.errors import UserError
from adapt.runio import read_json
from adapt.settings import check_field, cli_fields, flag_of, given, read_yaml_settings, setting, settings_from
from adapt.stopping import resume_hint

# Measured on the 762-image sample: higher rates make the transformer diverge early.
DEFAULT_LR = {"lstm": 2e-3, "attention": 1e-3, "transformer": 5e-4}
SCST_LR = 5e-5  # Rennie et al.'s rate; see docs/capkit.md for what it gave on the sample
ENSEMBLE = "ensemble"  # the decoder of `adapt caption-ensemble` folders (capkit.decoders.ensemble)
NOT_TRAINED = (
    "an ensemble is not trained; train its members, then join them with "
    "`adapt caption-ensemble RUN RUN ... --output DIR`"
)
DATA_HELP = "Dataset folder: Flickr8k (Kaggle or original layout) or images + captions.csv."


def _decoder_names() -> list[str]:
    # imports torch: only when help is shown or a value checked, so a decoder registered
    # (`capkit.register_decoder`) before the command line is parsed is accepted
    from capkit.decoders import decoder_names

    return [name for name in decoder_names() if name != ENSEMBLE]  # joined from runs, not trained


def _baseline_names() -> list[str]:
    # imports torch, like the decoders: only when help is shown or a value checked
    from capkit.scst import BASELINES

    return list(BASELINES)


def default_lr(decoder: str) -> float:
    """The learning rate of `decoder` when `--lr` is not given: `DEFAULT_LR` for the built-in
    decoders, a plug-in's `default_lr` class attribute otherwise."""
    if decoder in DEFAULT_LR:
        return DEFAULT_LR[decoder]
    from capkit.decoders import find_decoder

    cls = find_decoder(decoder)
    return float(cls.default_lr) if cls is not None else 1e-3


@dataclass
class TrainConfig:
    """Everything that defines a training run (written to config.json). Field order is the order
    of the flags in `--help` and in the `--resume` hint."""

    data: str = setting(help=DATA_HELP, cli=False)  # the command's PATH argument
    decoder: str = setting("attention", "Decoder.", choices=_decoder_names)
    encoder: str = setting(
        "efficientnet_lite0",
        "Image encoder: efficientnet_lite0, efficientnet_b0, any torchvision model, or NAME=weights.pth.",
    )
    epochs: int = setting(12, "Maximum epochs (early stopping may end sooner).", check="positive")
    batch_size: int = setting(64, "Captions per batch (per process).", check="positive")
    lr: float | None = setting(
        None,
        "Learning rate.",
        check="positive",
        default_text="by decoder: "
        + ", ".join(f"{name} {lr:g}" for name, lr in DEFAULT_LR.items())
        + ", a plug-in's default_lr",
    )
    seed: int = setting(0, "Random seed (split, initialisation, batch order).")
    patience: int = setting(
        3,
        "Stop after this many epochs without a better validation loss (validation CIDEr-D in self-critical training).",
        check="positive",
    )
    min_count: int = setting(3, "Keep words seen at least this often in training captions.", check="positive")
    max_length: int = setting(
        25, "Longest caption in words; longer ones are truncated (counted in metrics).", check="positive"
    )
    weight_decay: float = setting(1e-4, "AdamW weight decay.", check="non_negative")
    grad_clip: float = setting(5.0, "Clip the gradient norm to this.", check="positive")
    scst_epochs: int = setting(
        0,
        "Self-critical training epochs (reward: CIDEr-D) after the cross-entropy ones, from their best weights.",
        check="non_negative",
    )
    init_from: str | None = setting(
        None,
        "Self-critical training from this run folder's best weights and vocabulary (no cross-entropy epochs; needs --scst-epochs).",
    )
    scst_samples: int = setting(5, "Captions sampled per image in self-critical training.", check="positive")
    scst_baseline: str = setting(
        "greedy",
        "Self-critical baseline: the greedy caption's reward, or the mean reward of the image's other samples.",
        choices=_baseline_names,
    )
    scst_lr: float = setting(SCST_LR, "Learning rate of self-critical training.", check="positive")
    scst_batch_size: int = setting(
        16, "Images per self-critical step (each with --scst-samples captions).", check="positive"
    )
    output: str | None = setting(None, "Run folder.", default_text="runs/caption-DECODER-TIME")
    cache_dir: str | None = setting(
        None, "Feature cache folder.", default_text="$CAPKIT_CACHE, else ~/.cache/capkit"
    )
    decoder_config: dict[str, Any] = setting(
        default_factory=dict, help="The decoder's constructor settings (sizes, dropout).", cli=False
    )

    def validate(self) -> None:
        """Check every field (a one-line `UserError` naming its flag); no `lr` means the decoder's default."""
        if self.decoder == ENSEMBLE:
            raise UserError(f"--decoder {ENSEMBLE}: {NOT_TRAINED}")
        for f in dataclasses.fields(self):
            check_field(f, getattr(self, f.name))
        if self.init_from and not self.scst_epochs:
            raise UserError("--init-from only runs self-critical training: give --scst-epochs N (N > 0)")
        if self.scst_baseline == "mean" and self.scst_samples < 2:
            raise UserError("--scst-baseline mean needs --scst-samples 2 or more (the other samples' mean)")
        if self.lr is None:
            self.lr = default_lr(self.decoder)


def train_config_from(
    data: str | os.PathLike[str],
    flags: Mapping[str, Any],
    config_file: str | os.PathLike[str] | None = None,
) -> TrainConfig:
    """The settings of `adapt caption-train PATH`: a YAML `--config` file's, the flags given (not
    None) over them, PATH as `data`; checked and typed, one-line `UserError`s naming the flag."""
    values = {**(read_yaml_settings(config_file) if config_file else {}), **given(flags), "data": str(data)}
    if values.get("init_from"):
        values = {**inherited_settings(str(values["init_from"])), **values}
        if values.get("decoder") == ENSEMBLE:
            raise UserError(f"--init-from {values['init_from']}: {NOT_TRAINED}")
    return TrainConfig(**settings_from(TrainConfig, values))


# what `--init-from RUN` takes from that run unless given: the model and how its data was prepared
INHERITED = ("decoder", "encoder", "min_count", "max_length", "epochs", "seed")


def inherited_settings(run: str) -> dict[str, Any]:
    """The settings `--init-from RUN` inherits (`INHERITED`) from the run's config.json; none when
    it has none (`capkit.scst` then says what is wrong with the folder)."""
    path = Path(run) / "config.json"
    if not path.is_file():
        return {}
    saved = read_json(path)
    return {k: saved[k] for k in INHERITED if isinstance(saved, dict) and k in saved}


def resume_command(cfg: TrainConfig) -> str:
    """The `adapt caption-train ... --resume` line that continues this run with its own settings.

    Every flag that differs from its default is repeated: resume refuses a different decoder,
    encoder, vocabulary or seed, and a different batch size or learning rate would change the result.
    """
    defaults = TrainConfig(data=cfg.data, decoder=cfg.decoder, lr=default_lr(cfg.decoder))
    args = ["adapt", "caption-train", cfg.data, "--decoder", cfg.decoder]
    for f in cli_fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.name not in ("decoder", "output") and value != getattr(defaults, f.name):
            args += [flag_of(f.name), str(value)]
    return resume_hint([*args, "--output", str(cfg.output), "--resume"])
