"""Where a model runs and in which dtype, so a GPU user never has to think about it.

`--device auto` (the default) is the GPU of this process when there is one (under `torchrun`, the
one `LOCAL_RANK` names) and the CPU otherwise. On a GPU the compute dtype is bf16 where the card
supports it and fp16 before Ampere (a T4); trainable tensors stay fp32 either way, so optimizer
updates are not rounded away and fp16's gradient scaler works. CPUs compute in fp32 (see
docs/benchmarks.md for bf16 on CPUs).
"""

from __future__ import annotations

import os
from typing import Any

from adapt.errors import UserError

DEVICE_HELP = "auto (this process's GPU when there is one, else the CPU), cpu, cuda or cuda:N."


def resolve_device(spec: str | None = "auto") -> Any:
    """The torch device `spec` names, or a one-line `UserError` naming --device."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if spec == "cpu":
        return torch.device("cpu")
    kind, _, index = spec.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise UserError(f"--device: unknown value {spec!r}; choose auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"--device {spec}: this machine has no CUDA GPU (torch sees none); use --device cpu")
    n = int(index or os.environ.get("LOCAL_RANK", "0"))
    if n >= torch.cuda.device_count():
        raise UserError(f"--device {spec}: there are only {torch.cuda.device_count()} GPUs (cuda:0..)")
    return torch.device("cuda", n)


def compute_dtype(device: Any) -> Any:
    """bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPUs."""
    import torch

    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def upcast_trainable(model: Any) -> int:
    """Keep every trainable tensor in fp32 (the freeze layers and ChatML rows included); returns how
    many were cast. Mixed precision then computes in half precision from fp32 weights."""
    import torch

    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
            cast += 1
    return cast


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    """A batch of tensors on `device` (anything else unchanged)."""
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
