"""`FinetuneConfig`: every setting of an `adapt finetune` run, with its default and its help.

The flags of `adapt finetune` are generated from these fields and from each method's own
settings (`fa_adapt.methods`), and a YAML `--config` file, the API's keyword arguments and a run's
`config.json` all go through `resolve_config`, so each default and each check is written once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from adapt.errors import UserError
from adapt.run_folder import default_run_folder
from adapt.settings import flag_of, setting, settings_from
from fa_adapt.device import DEVICE_HELP, DTYPE_HELP, DTYPES, DtypeChoice
from fa_adapt.methods import METHODS, Method, get_method

# With neither --epochs nor --max-steps a run makes one pass over the data: on the packaged sample
# that is what a default LoRA run needs to answer in Persian and stop (docs/fa_adapt.md), and it
# takes minutes on a 2-core CPU. The source's epoch counts (5 lora, 10 prompt, 3 freeze) are a flag away.
DEFAULT_EPOCHS = 1.0
# The packaged data holds 1,248 conversations; without --max-train-rows a run on it trains on its
# first 650: in the recipe study (docs/fa_adapt.md) data was the strongest lever, and 650 rows are
# what fits the README's 10-minute CPU budget (9 min 29 s for `adapt finetune`, idle 2-core
# AVX512-BF16 CPU; 700 rows took 9 min 18 s once and 10 min 30 s once, 800 rows 11 min 13 s).
# `--max-train-rows 2000` trains on all of it.
PACKAGED_DEFAULT_ROWS = 650
# keys a run's own config.json carries beside its settings (`strategy`: runs of version 0.1)
RECORD_KEYS = ("chatml_token_ids", "strategy")


def _quantizations() -> tuple[str, ...]:
    from fa_adapt.loading import QUANTIZATIONS

    return QUANTIZATIONS


# Trainer's optimizers that run on a CPU; bitsandbytes' 8-bit and paged ones need a GPU
CPU_OPTIMIZERS = ("adamw_torch_fused", "adamw_torch", "adafactor", "sgd", "adagrad", "rmsprop")
GPU_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit", "paged_lion_8bit")
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)
REPORTERS = ("none", "tensorboard")


def _optimizers() -> tuple[str, ...]:
    import torch

    return CPU_OPTIMIZERS + (GPU_OPTIMIZERS if torch.cuda.is_available() else ())


def _default_rates() -> str:
    return ", ".join(f"{name} {cls.default_lr:g}" for name, cls in METHODS.items())


@dataclass
class FinetuneConfig:
    """An `adapt finetune` run. `None` means "the default that depends on other settings"."""

    method: str = setting("lora", "Fine-tuning method.", choices=lambda: list(METHODS))
    model: str | None = setting(None, "Model id or folder.", default_text="embedded Gemma 3 270M")
    data: str | None = setting(
        None,
        "Chat data: a .jsonl/.json/.parquet/.csv file, a hub dataset name or a local datasets folder.",
        default_text="the packaged Persian sample",
    )
    output: str | None = setting(None, "Run folder to write.", default_text="runs/fa-METHOD-TIME")
    epochs: float | None = setting(
        None,
        "Training epochs (the source used lora 5, prompt 10, freeze 3).",
        check="positive",
        default_text=f"{DEFAULT_EPOCHS:g}",
    )
    max_steps: int | None = setting(
        None, "Stop after this many optimizer steps (overrides --epochs).", check="positive"
    )
    lr: float | None = setting(None, "Learning rate.", check="positive", default_text=_default_rates)
    batch_size: int = setting(4, "Rows per device batch.", check="positive")
    grad_accum: int = setting(1, "Gradient accumulation steps.", check="positive")
    max_length: int = setting(
        160, "Token limit per conversation (longer: truncated or skipped).", check="positive"
    )
    seed: int = setting(42, "Random seed.", check="non_negative")
    quantization: str = setting("nf4", "nf4 (4-bit) or none.", choices=_quantizations)
    device: str = setting("auto", "Where to train: " + DEVICE_HELP)
    # not `dtype`: a run folder's config.json is read by transformers too (AutoTokenizer), where
    # "dtype" must name a torch dtype
    compute_dtype: str = setting("auto", DTYPE_HELP, choices=lambda: list(DTYPES), flag="--dtype")
    gradient_checkpointing: bool = setting(False, "Trade compute for memory.")
    max_train_rows: int | None = setting(
        None,
        "Use only the first N conversations.",
        check="positive",
        default_text=f"all; of the packaged data, its first {PACKAGED_DEFAULT_ROWS}",
    )
    system_prompt: str | None = setting(
        None,
        "A system message put first in every training conversation that has none; the run then "
        "answers with it unless --system overrides it.",
        default_text="none",
    )
    logging_steps: int = setting(5, "Log the training loss every N steps.", check="positive")
    eval_steps: int | None = setting(
        None, "Evaluate every N steps.", check="positive", default_text="halfway and at the end"
    )
    save_steps: int | None = setting(
        None, "Save a checkpoint every N steps.", check="positive", default_text="at each evaluation"
    )
    optim: str = setting(
        "adamw_torch_fused",
        "Optimizer (Trainer's names; the 8-bit and paged ones where a GPU is present).",
        choices=_optimizers,
    )
    lr_scheduler: str = setting("linear", "Learning-rate schedule.", choices=lambda: SCHEDULERS)
    warmup_ratio: float | None = setting(
        None, "Share of the steps spent warming up, in [0, 1).", default_text="10% of the steps, at most 10"
    )
    weight_decay: float = setting(0.0, "AdamW weight decay.", check="non_negative")
    max_grad_norm: float = setting(1.0, "Clip gradients to this norm (0 = off).", check="non_negative")
    neftune_noise_alpha: float | None = setting(
        None, "NEFTune: noise on the input embeddings while training (5-15 is typical).", check="positive"
    )
    early_stopping_patience: int | None = setting(
        None, "Stop after this many evaluations without a better validation loss.", check="positive"
    )
    report_to: str = setting(
        "none", "Also log to: none or tensorboard (into RUN/tb).", choices=lambda: REPORTERS
    )
    strict: bool = setting(False, "Stop on the first bad data row instead of skipping it.")
    resume: bool = setting(
        False,
        "Continue the stopped run in --output from its newest checkpoint (its settings are kept; "
        "flags given override them).",
    )
    overwrite: bool = setting(
        False,
        "Replace a previous fa_adapt run in --output (never other files; without it such a folder "
        "is refused).",
    )
    method_settings: dict[str, Any] = setting(
        default_factory=dict, help="The method's own settings, resolved.", cli=False
    )

    def build_method(self) -> Method:
        """The registered method of this run, with its settings."""
        return get_method(self.method, self.method_settings)

    def dtype_choice(self) -> DtypeChoice:
        """The device's compute dtype for this run (`--dtype`, `fa_adapt.device.choose_dtype`)."""
        from fa_adapt.device import choose_dtype, resolve_device

        return choose_dtype(resolve_device(self.device), self.compute_dtype)

    def saved(self) -> dict[str, Any]:
        """The run's settings as its folder keeps them: flat, as flags are named, with the one-off
        switches of this invocation (resume, overwrite) off."""
        flat = dataclasses.asdict(self)
        flat.update(flat.pop("method_settings"), resume=False, overwrite=False)
        return flat


_OWN = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"method_settings"}


def _method_values(method: str, values: dict[str, Any]) -> dict[str, Any]:
    """The given settings that belong to `method` (checked); one of another method is refused."""
    mine = {f.name for f in dataclasses.fields(METHODS[method].Settings)}
    owners = {f.name: name for name, cls in METHODS.items() for f in dataclasses.fields(cls.Settings)}
    for key, value in values.items():
        if key in mine or value is None:
            continue
        if key in owners:
            raise UserError(f"{flag_of(key)} applies to --method {owners[key]}, not {method}")
    unknown = sorted(set(values) - set(owners) - set(RECORD_KEYS))
    if unknown:
        raise UserError(f"unknown setting(s): {', '.join(unknown)}")
    return settings_from(METHODS[method].Settings, {k: v for k, v in values.items() if k in mine})


def resolve_config(**settings: Any) -> FinetuneConfig:
    """Flat settings (flags, YAML, API keywords or a run's config.json; `None` = not given) as a
    checked `FinetuneConfig` with every default filled in; a one-line `UserError` otherwise."""
    own = settings_from(FinetuneConfig, {k: v for k, v in settings.items() if k in _OWN})
    method = own.get("method", FinetuneConfig.method)
    chosen = _method_values(method, {k: v for k, v in settings.items() if k not in _OWN})
    cls = METHODS[method]
    cfg = FinetuneConfig(**own, method_settings=dataclasses.asdict(cls.Settings(**chosen)))
    if cfg.lr is None:
        cfg.lr = cls.default_lr
    if cfg.epochs is None and cfg.max_steps is None:
        cfg.epochs = DEFAULT_EPOCHS
    if cfg.output is None:
        cfg.output = default_run_folder(f"fa-{cfg.method}")
    if cfg.data is None and cfg.max_train_rows is None:
        cfg.max_train_rows = PACKAGED_DEFAULT_ROWS
    cfg.dtype_choice()  # a wrong or missing device, or bf16 on a GPU without it, is said before anything loads
    if cfg.warmup_ratio is not None and not 0 <= cfg.warmup_ratio < 1:
        raise UserError(f"--warmup-ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if cfg.eval_steps and cfg.save_steps and cfg.save_steps % cfg.eval_steps:
        raise UserError(
            f"--save-steps ({cfg.save_steps}) must be a multiple of --eval-steps ({cfg.eval_steps}): "
            "the best evaluated weights are kept from a checkpoint"
        )
    return cfg
