"""Where a model runs and in which dtype, so a GPU user never has to think about it.

`--device auto` (the default) is the GPU of this process when there is one (under `torchrun`, the
one `LOCAL_RANK` names) and the CPU otherwise. On a GPU the compute dtype is bf16 where the card
supports it and fp16 before Ampere (a T4). On a CPU, `--dtype auto` is bf16 where the CPU has the
instructions for it (`avx512_bf16` or `amx_bf16`: bf16 matmuls measured 2.2x to 6.9x the fp32 rate)
and fp32 elsewhere (AVX2 alone: bf16 is emulated, about 10x slower than fp32; docs/benchmarks.md).
Trainable tensors stay fp32 in every case, so optimizer updates are not rounded away and fp16's
gradient scaler works; bf16 and fp16 are the compute dtype of the frozen weights and of autocast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from adapt.errors import UserError

DEVICE_HELP = "auto (this process's GPU when there is one, else the CPU), cpu, cuda or cuda:N."
DTYPES = ("auto", "fp32", "bf16")
DTYPE_HELP = (
    "Compute dtype: auto (bf16 on GPUs and on CPUs with avx512_bf16/amx_bf16, fp16 on older GPUs, "
    "fp32 elsewhere), fp32 or bf16. Trained tensors stay fp32."
)
_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve_device(spec: str | None = "auto") -> Any:
    """The torch device `spec` names, or a one-line `UserError` naming --device."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return _cuda_device(spec, "") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    kind, _, index = spec.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise UserError(f"--device: unknown value {spec!r}; choose auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"--device {spec}: this machine has no CUDA GPU (torch sees none); use --device cpu")
    return _cuda_device(spec, index)


def _cuda_device(spec: str, index: str) -> Any:
    """cuda:`index`, or without one the GPU of this process's `LOCAL_RANK` (torchrun sets it)."""
    import torch

    count = torch.cuda.device_count()
    n = int(index or os.environ.get("LOCAL_RANK", "0"))
    if n >= count and not index:
        # torchrun --nproc_per_node larger than the GPU count: say so instead of CUDA's
        # "invalid device ordinal" from deep inside the model load
        raise UserError(
            f"--device {spec}: this is process LOCAL_RANK={n} of a launch with more "
            f"processes than this machine's {count} GPU(s); launch at most {count} per node, or use --device cpu"
        )
    if n >= count:
        raise UserError(f"--device {spec}: there are only {count} GPUs (cuda:0..)")
    return torch.device("cuda", n)


@dataclass(frozen=True)
class DtypeChoice:
    """The compute dtype of a run and why it was chosen (written to config.json and summary.md)."""

    dtype: Any  # torch.float32, torch.bfloat16 or torch.float16
    reason: str

    @property
    def name(self) -> str:
        """ "fp32", "bf16" or "fp16"."""
        return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[str(self.dtype).split(".")[-1]]

    def record(self) -> dict[str, str]:
        """What a run folder records of the choice."""
        return {"compute_dtype": self.name, "compute_dtype_reason": self.reason}


def cpu_bf16_flags(cpu: dict[str, Any] | None = None) -> list[str]:
    """Which of the bf16 instruction sets (`amx_bf16`, `avx512_bf16`) this CPU has, from /proc/cpuinfo
    (`cpu`: `adapt.environment.cpu_description()`, read when not given)."""
    from adapt.environment import cpu_description

    cpu = cpu if cpu is not None else cpu_description()
    return [flag for flag in _BF16_CPU_FLAGS if cpu.get(flag)]


def choose_dtype(
    device: Any, requested: str | None = "auto", cpu: dict[str, Any] | None = None
) -> DtypeChoice:
    """The compute dtype for `device` (`--dtype`: auto, fp32 or bf16), with the reason; a one-line
    `UserError` naming --dtype for an unknown value or bf16 on a GPU without it."""
    import torch

    requested = (requested or "auto").strip().lower()
    if requested not in DTYPES:
        raise UserError(f"--dtype: unknown value {requested!r}; choose {', '.join(DTYPES)}")
    gpu = device.type == "cuda"
    if requested == "fp32":
        return DtypeChoice(torch.float32, "--dtype fp32")
    if gpu:
        if torch.cuda.is_bf16_supported():
            return DtypeChoice(torch.bfloat16, f"--dtype {requested}: the GPU supports bf16")
        if requested == "bf16":
            raise UserError(
                f"--dtype bf16: {torch.cuda.get_device_name(device)} has no bf16; use auto (fp16)"
            )
        return DtypeChoice(torch.float16, "--dtype auto: the GPU has no bf16 (before Ampere), so fp16")
    flags = cpu_bf16_flags(cpu)
    if requested == "bf16":
        note = (
            f"the CPU has {', '.join(flags)}"
            if flags
            else "the CPU has no avx512_bf16/amx_bf16: expect it slower"
        )
        return DtypeChoice(torch.bfloat16, f"--dtype bf16 ({note})")
    if flags:
        return DtypeChoice(
            torch.bfloat16, f"--dtype auto: the CPU has {', '.join(flags)} (bf16 matmuls are faster)"
        )
    return DtypeChoice(
        torch.float32, "--dtype auto: the CPU has no avx512_bf16/amx_bf16 (bf16 would be emulated, slower)"
    )


def as_dtype_choice(device: Any, dtype: Any) -> DtypeChoice:
    """`dtype` as a `DtypeChoice` for `device`: a `--dtype` value (or None, auto), a torch dtype
    given by a caller, or a choice already made."""
    if isinstance(dtype, DtypeChoice):
        return dtype
    if dtype is None or isinstance(dtype, str):
        return choose_dtype(device, dtype)
    return DtypeChoice(dtype, f"{dtype} given by the caller")


def dtype_record(device: str = "auto", dtype: str = "auto") -> dict[str, str]:
    """What a results file records of the compute dtype `--device`/`--dtype` give, with the CPU kind."""
    from adapt.environment import cpu_kind

    return {**choose_dtype(resolve_device(device), dtype).record(), "cpu_kind": cpu_kind()}


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
