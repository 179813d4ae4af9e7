"""Fine-tuning methods, keyed by the names `--method` accepts.

A method is one class in one module (PEFT's way): its settings dataclass and the hooks that
training, loading and export call. Nothing outside this folder branches on a method's name, so a
new method is one new module here (or anywhere, with `register_method`): see `base.Method`.
"""

from __future__ import annotations

from fa_adapt.methods import freeze, lora, prompt  # noqa: F401  (registers the built-in methods)
from fa_adapt.methods.base import METHODS, Method, NoSettings, get_method, register_method, settings_classes

__all__ = ["METHODS", "Method", "NoSettings", "get_method", "register_method", "settings_classes"]
