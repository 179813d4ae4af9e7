"""What a fine-tuning method is: settings plus the hooks `finetune`, `load_run` and `export` call.

    @register_method
    class Bias(Method):
        name = "bias"
        default_lr = 1e-3
        def apply(self, model, new_token_ids): ...

The defaults fit a PEFT method whose trained parts are one adapter (LoRA, prompt tuning): saved
with `save_pretrained` into `adapter/`, loaded with `PeftModel.from_pretrained`. A method that
trains something else overrides `save` and `load` (see `freeze`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from adapt.errors import UserError
from adapt.runio import check_choice, staging_folder, swap_in

ADAPTER = "adapter"  # the PEFT adapter's folder in a run folder


@dataclasses.dataclass
class NoSettings:
    """A method without settings of its own."""


class Method:
    """One fine-tuning method. Subclasses set `name`, `default_lr` and implement `apply`."""

    name: ClassVar[str]
    Settings: ClassVar[type] = NoSettings  # dataclass of the method's own flags (adapt.settings fields)
    default_lr: ClassVar[float]
    # what the method writes into a run folder (beside the files every run has): `--overwrite`
    # deletes these and nothing else
    run_files: ClassVar[tuple[str, ...]] = (ADAPTER,)
    # the token-row adapter's cheaper forward (fa_adapt.token_rows); off where PEFT wraps the
    # embedding itself (prompt tuning)
    row_only_forward: ClassVar[bool] = True
    # the library that loads the run folder's trained parts, for its model card (`library_name`)
    library_name: ClassVar[str] = "peft"
    # why `adapt export` cannot merge this method's runs into a plain model; None when it can
    export_refusal: ClassVar[str | None] = None

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    def keep_unquantized(self, model_config: Any) -> list[str] | None:
        """Module names to load in full precision when the rest is 4-bit (the modules it trains)."""
        return None

    def apply(self, model: Any, new_token_ids: list[int]) -> Any:
        """The model to train: `model` with this method's trainable parts (and the new ChatML rows)."""
        raise NotImplementedError

    def save(self, model: Any, out: Path) -> None:
        """Write the trained parts into run folder `out` (the PEFT adapter, swapped in whole)."""
        # the resized embedding is rebuilt at load time (add_chatml_tokens is deterministic) and the
        # trained ChatML rows are in the adapter's token deltas: never copy the 262k-row matrix
        with staging_folder(out) as tmp:
            model.save_pretrained(str(tmp / ADAPTER), safe_serialization=True, save_embedding_layers=False)
            swap_in(tmp / ADAPTER, out / ADAPTER)

    def load(self, model: Any, folder: Path, base: str) -> Any:
        """`model` (base model `base`, ChatML rows added) with the trained parts of run `folder`,
        ready for inference."""
        from fa_adapt.methods.adapters import load_adapter, merge_token_rows

        model = load_adapter(model, folder / ADAPTER, base)
        merge_token_rows(model)
        return model


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make `cls` a method that `--method cls.name` and the API accept."""
    if not dataclasses.is_dataclass(cls.Settings):
        raise TypeError(f"{cls.__name__}.Settings must be a dataclass")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str, settings: dict[str, Any] | None = None) -> Method:
    """The method registered as `name`, with `settings` (checked field values) over its defaults."""
    check_choice("--method", name, list(METHODS))
    cls = METHODS[name]
    try:
        return cls(cls.Settings(**(settings or {})))
    except TypeError as err:
        raise UserError(f"--method {name}: {err}") from None


def settings_classes() -> list[type]:
    """Every registered method's settings dataclass (their fields are `adapt finetune` flags)."""
    return [cls.Settings for cls in METHODS.values()]
