"""Shared pieces of the benchmark scripts: machine description, timing, memory, results.

Every benchmark measures its baseline in the same run and reports ratios; absolute numbers are
printed beside them. Results go to bench/results/<name>.json (atomically) and a Rich table.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16"}  # --dtype names -> torch's


def machine(device: str = "cpu") -> dict[str, Any]:
    """What the figures were measured on: CPU model and kind (AVX2 / AVX512-BF16 / AMX flags),
    library versions, threads, and the GPU when one is used."""
    import torch

    from adapt.environment import describe

    info = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        **describe(),
        "torch_threads": torch.get_num_threads(),
        "device": device,  # describe() adds the GPU's name when torch sees one
    }
    return info


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_average() -> list[float]:
    """1-, 5- and 15-minute load averages: how busy the (shared) machine was around a measurement."""
    return [round(x, 2) for x in os.getloadavg()]


def reset_peak_rss() -> bool:
    """Restart this process's peak-resident-memory count (Linux `clear_refs` 5); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mib(field: str = "VmRSS") -> float:
    """Resident memory of this process now (`VmRSS`) or its peak since the last reset (`VmHWM`), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(
    fn: Callable[[], Any], repeat: int = 3, warmup: int = 1, sync: Callable[[], None] | None = None
) -> float:
    """Median wall time of `fn` over `repeat` runs after `warmup` runs, in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def matmul_peak_flops(dtype_name: str = "float32", n: int = 1024, device: str = "cpu") -> float:
    """Achieved FLOP/s of a square matmul: the practical ceiling of this machine for `dtype`."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    seconds = timed(lambda: a @ b, repeat=5, warmup=2, sync=sync)
    return 2 * n**3 / seconds


def in_subprocess(script: Path, args: Sequence[str], timeout: float = 900) -> dict[str, Any]:
    """Run `script args` in a fresh interpreter and return the JSON it prints on its last line.

    Peak memory is per process, so each configuration that reports memory runs alone.
    """
    proc = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(name: str, title: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """Print `rows` as a Rich table and write {meta, rows} to bench/results/<name>.json atomically."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    for col in columns:
        table.add_column(col, justify="left" if col in ("config", "model", "method", "what") else "right")
    for row in rows:
        table.add_row(*(_fmt(row.get(c)) for c in columns))
    Console().print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / f"{name}.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, target)
    print(f"wrote {target}")
    return target


def shared_data() -> Path:
    """The shared data folder: `$ADAPT_SHARED_DATA`, else `shared/data` beside the repository."""
    repo_root = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("ADAPT_SHARED_DATA") or repo_root.parent / "shared" / "data")


def require_device(device: str) -> None:
    """Exit with a one-line message (code 2) when `device` names a GPU this machine does not have."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"error: --device {device}: no CUDA GPU is visible to torch here "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False); run with --device cpu",
            file=sys.stderr,
        )
        sys.exit(2)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
