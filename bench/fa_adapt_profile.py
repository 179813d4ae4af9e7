"""Where a training step's time goes: torch.profiler's top operators, per compute dtype.

    python bench/fa_adapt_profile.py [--method lora] [--dtypes fp32,bf16] [--steps 3] [--top 12]

The model is built as `adapt finetune --method M --dtype D` builds it (NF4 Gemma 3 270M); the
step is the one `ChatTrainer` takes: the labeled-positions loss (fa_adapt.labeled_loss) forward and
backward, under bf16 autocast when D is bf16, on a fixed batch of 4 bundled conversations. One
warm-up step, then --steps profiled steps. The table lists each operator's share of the profiled
CPU time; the baseline is the same step in the first dtype (its wall time, the ratio beside it).
The matmul rate (aten::mm FLOPs are not counted by the profiler on CPU, so its share of time is the
figure) tells how much of a step is the matmul work a faster kernel could speed up.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DTYPE_NAMES, load_average, machine, matmul_peak_flops, report  # noqa: E402
from _fa_adapt import quiet  # noqa: E402


def _batch(tokenizer: Any) -> dict[str, Any]:
    from fa_adapt import data as chat_data
    from fa_adapt.collator import ChatCollator

    conversations, stats = chat_data.load_conversations(None)
    rows = chat_data.tokenize_conversations(tokenizer, conversations[:4], 160, stats)
    return ChatCollator(tokenizer.pad_token_id)(rows)


def profile_dtype(method: str, dtype: str, steps: int, top: int) -> dict[str, Any]:
    """Wall time per step and the top operators by self CPU time, for `method` in `dtype`."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from fa_adapt.config import resolve_config
    from fa_adapt.labeled_loss import labeled_loss
    from fa_adapt.training import prepare_model

    cfg = resolve_config(method=method, output="/tmp/bench-unused", compute_dtype=dtype)
    model, tokenizer, _, _ = prepare_model(cfg)
    model.train()
    batch = _batch(tokenizer)
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext
    )

    def step() -> None:
        with autocast():
            loss, _ = labeled_loss(model, batch)
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - start) / steps
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    ops = [
        {
            "op": e.key,
            "share": e.self_cpu_time_total / total,
            "ms_per_step": e.self_cpu_time_total / 1e3 / steps,
        }
        for e in events[:top]
    ]
    return {"step_s": wall, "tokens": int(batch["attention_mask"].sum()), "top_ops": ops}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="lora", help="lora, prompt or freeze (default lora)")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma-separated of fp32,bf16 (default both)")
    ap.add_argument("--steps", type=int, default=3, help="profiled steps (default 3)")
    ap.add_argument("--top", type=int, default=12, help="operators listed per dtype (default 12)")
    args = ap.parse_args()
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not dtypes or set(dtypes) - set(DTYPE_NAMES) or args.steps < 1 or args.top < 1:
        sys.exit("error: --dtypes from fp32,bf16; --steps and --top >= 1")
    quiet()
    started = load_average()
    peaks = {d: matmul_peak_flops(DTYPE_NAMES[d]) / 1e9 for d in dtypes}
    results = {d: profile_dtype(args.method, d, args.steps, args.top) for d in dtypes}
    base = results[dtypes[0]]["step_s"]
    rows = []
    for d, r in results.items():
        for rank, op in enumerate(r["top_ops"], 1):
            rows.append(
                {
                    "config": f"{args.method}-{d}",
                    "step_s": r["step_s"] if rank == 1 else None,
                    f"speed_vs_{dtypes[0]}": base / r["step_s"] if rank == 1 else None,
                    "rank": rank,
                    "op": op["op"][:60],
                    "share": op["share"],
                    "ms_per_step": op["ms_per_step"],
                }
            )
    meta = machine() | {
        "command": " ".join(["python", "bench/fa_adapt_profile.py", *sys.argv[1:]]),
        "model": "gemma-3-270m (embedded), NF4",
        "matmul_peak_gflop_s_1024": peaks,
        "load_average_start": started,
        "load_average_end": load_average(),
        "details": results,
    }
    report(f"fa_adapt_profile_{args.method}", "fa_adapt training step: top operators", rows, meta)


if __name__ == "__main__":
    main()
