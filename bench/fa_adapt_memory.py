"""Memory: one model loaded 4-bit NF4 against the same model unquantized, each in its own process.

    python bench/fa_adapt_memory.py [--model PATH_OR_ID] [--device cpu|cuda]

Baseline: the unquantized load (fp32 on CPU, where bf16 matmuls are slow; bf16 on CUDA).
Reports resident memory added by the load, peak resident memory, and the model's own footprint
(`get_memory_footprint()`), with the NF4/baseline ratio of each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import in_subprocess, machine, peak_rss_mib, report  # noqa: E402


def _rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(model: str | None, quantization: str, device: str) -> None:
    import torch  # noqa: F401  (imported before the baseline reading so it is not counted)
    import transformers  # noqa: F401

    from fa_adapt.loading import load_model

    before = _rss_mib()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    m = load_model(model, quantization=quantization, for_training=False)
    after = _rss_mib()
    out = {
        "load_rss_mib": after - before,
        "peak_rss_mib": peak_rss_mib(),
        "footprint_mib": m.get_memory_footprint() / 2**20,
    }
    if device.startswith("cuda"):
        out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model id or path (default: the embedded Gemma 3 270M)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", choices=["nf4", "none"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.model, args.child, args.device)
        return
    extra = ["--device", args.device] + (["--model", args.model] if args.model else [])
    base = in_subprocess(Path(__file__), ["--child", "none", *extra])
    nf4 = in_subprocess(Path(__file__), ["--child", "nf4", *extra])
    rows = []
    for key in base:
        rows.append(
            {
                "what": key,
                "unquantized": base[key],
                "nf4": nf4[key],
                "nf4 / unquantized": nf4[key] / base[key],
            }
        )
    meta = machine(args.device) | {
        "model": args.model or "gemma-3-270m (embedded)",
        "command": " ".join(sys.argv),
    }
    report("fa_adapt_memory", "Model memory: NF4 vs unquantized (MiB)", rows, meta)


if __name__ == "__main__":
    main()
