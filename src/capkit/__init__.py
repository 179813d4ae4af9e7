"""capkit: image captioning with pluggable frozen CNN encoders, decoders and decodings.

Importing capkit is cheap: torch is imported only when a public entry point is used
(module `__getattr__`).
"""

from __future__ import annotations

from typing import Any

from adapt import __version__

_LAZY = {
    "load_captioner": ("capkit.runs", "load_captioner"),
    "load_dataset": ("capkit.data", "load_dataset"),
    "train": ("capkit.training", "train"),
    "TrainConfig": ("capkit.train_config", "TrainConfig"),
    "caption_images": ("capkit.captioning", "caption_images"),
    "evaluate": ("capkit.evaluation", "evaluate"),
    "make_ensemble": ("capkit.ensemble", "make_ensemble"),
    # plug-ins from user code (`capkit.plugins`); the module itself imports no torch
    "register_encoder": ("capkit.plugins", "register_encoder"),
    "register_decoder": ("capkit.plugins", "register_decoder"),
    "register_decoding": ("capkit.plugins", "register_decoding"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'capkit' has no attribute {name!r}")
