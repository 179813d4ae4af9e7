"""fa_adapt: adapt a 4-bit quantized Gemma chat model to Persian conversation.

The public entry points are imported lazily (module `__getattr__`), so `import fa_adapt`
stays light and torch loads only when one of them is used.
"""

from __future__ import annotations

from typing import Any

from adapt import __version__

_LAZY = {
    "finetune": ("fa_adapt.training", "finetune"),
    "FinetuneConfig": ("fa_adapt.config", "FinetuneConfig"),
    "Method": ("fa_adapt.methods", "Method"),
    "register_method": ("fa_adapt.methods", "register_method"),
    "load_run": ("fa_adapt.runs", "load_run"),
    "Run": ("fa_adapt.runs", "Run"),
    "load_model": ("fa_adapt.loading", "load_model"),
    "load_tokenizer": ("fa_adapt.loading", "load_tokenizer"),
    "generate": ("fa_adapt.generation", "generate"),
    "generate_batch": ("fa_adapt.generation", "generate_batch"),
    "evaluate": ("fa_adapt.evaluation", "evaluate"),
    "compare": ("fa_adapt.compare", "compare"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'fa_adapt' has no attribute {name!r}")
