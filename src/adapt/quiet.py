"""Other libraries' messages that say nothing a user of `adapt` can act on, filtered at their source.

Each is named here with the reason; nothing is silenced wholesale (a torch warning about bitsandbytes'
`gemv_4bit` once was the only sign of a real training bug, so warnings in general stay on). The
`adapt` program calls `quiet_libraries()` before any heavy import; library users keep every message.
"""

from __future__ import annotations

import logging
import os
import warnings

# (logger, start of the message) pairs dropped where they are logged
_DROPPED_LOGS = (
    # bitsandbytes on an AVX512-BF16 CPU: its optional fused kernel comes from the `kernels`
    # package, which fetches from a model hub at run time (no answer offline); the built-in
    # kernel runs instead, and fa_adapt measured that path (docs/benchmarks.md)
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
    # Trainer sorting checkpoints written within a second of each other: it then sorts by step
    ("transformers.trainer_utils", "mtime may not be reliable on this filesystem"),
)
# (category, message regex) pairs of warnings about the libraries' own code
_DROPPED_WARNINGS = (
    # peft 0.21 reads a property transformers 5 deprecated, once per adapter model built
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    # peft ignores position ids with prompt tuning, which builds its own: nothing is lost
    (UserWarning, r"Position ids are not supported for parameter efficient tuning"),
)


class _DropMessage(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


def quiet_libraries() -> None:
    """Drop the messages above, and the libraries' tqdm bars (our Rich bars show progress)."""
    # read by huggingface_hub and transformers when they are imported
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for logger, start in _DROPPED_LOGS:
        logging.getLogger(logger).addFilter(_DropMessage(start))
    for category, message in _DROPPED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
