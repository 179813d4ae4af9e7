"""What this machine and Python environment are: the figures and failures that depend on them.

The same code behaves differently on CPUs with and without AVX512-BF16 (bitsandbytes' packed CPU
path, bf16 matmul speed) and under different library versions, so the test run's header, every
benchmark and `adapt env` print the same description.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "torchvision")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def library_versions() -> dict[str, str]:
    """Installed version of each library `adapt` depends on most ("missing" when absent)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def cpu_description() -> dict[str, Any]:
    """CPU model, cores, and which of the flags that change our behaviour it has (Linux /proc/cpuinfo)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("unknown", platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), **{f: f in flags for f in CPU_FLAGS}}


def cpu_kind(info: dict[str, Any] | None = None) -> str:
    """A short name for the CPU kind: "AVX512-BF16 + AMX", "AVX512-BF16", "AVX-512", "AVX2" or "other"."""
    info = info or cpu_description()
    if info.get("amx_bf16"):
        return "AVX512-BF16 + AMX"
    if info.get("avx512_bf16"):
        return "AVX512-BF16"
    if info.get("avx512f"):
        return "AVX-512 (no BF16)"
    return "AVX2" if info.get("avx2") else "other"


def describe() -> dict[str, Any]:
    """Python, library versions, CPU and its kind (and the GPU when torch sees one)."""
    cpu = cpu_description()
    info: dict[str, Any] = {
        "python": platform.python_version(),
        **library_versions(),
        **cpu,
        "cpu_kind": cpu_kind(cpu),
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def one_line(info: dict[str, Any] | None = None) -> str:
    """`describe()` as one line, for a test header or a log."""
    info = info or describe()
    libs = ", ".join(f"{name} {info[name]}" for name in LIBRARIES)
    flags = " ".join(f"{f}={'yes' if info[f] else 'no'}" for f in CPU_FLAGS)
    gpu = f"; GPU {info['gpu']}" if "gpu" in info else ""
    return (
        f"python {info['python']}, {libs}; CPU {info['cpu']} ({info['cores']} cores, {info['cpu_kind']}: "
        f"{flags}){gpu}"
    )
