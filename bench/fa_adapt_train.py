"""Fine-tuning throughput, peak memory and FLOP/s fraction: our pipeline against the source's setup and TRL.

    python bench/fa_adapt_train.py [--methods lora,prompt,freeze] [--dtypes fp32,bf16] [--rows 6] [--device cuda] [--gemma2-2b]

Every configuration trains the SAME conversations (a fixed random sample of the bundled Persian
chat data, train split) for one epoch, after one warm-up step on other rows, all in this process:
  ours-<method>    `adapt finetune`'s setup: batches of 4, length-grouped order, each batch padded
                   to its own longest row, output projection only at labeled positions, ChatML
                   rows through the row-only forward (fa_adapt.token_rows)
  source-<method>  the source's setup: batch size 1, every row padded to the fixed --max-length,
                   plain transformers Trainer (the model's own loss over every position), ChatML
                   rows through PEFT's own token layer
  trl-lora         TRL's SFTTrainer with the same NF4 model, LoRA config (incl. the ChatML token
                   rows) and the same tokenized rows and labels, gradient checkpointing off as in ours
Throughput = assistant (labeled) tokens / s and all non-pad tokens / s over the epoch's wall time.
Peak memory = the process's peak resident memory during that epoch (or the GPU's peak allocation).
Useful FLOPs = (4·N + 2·N_trained) per non-pad token (+ soft-prompt positions) + 4·V·H per labeled
token: forward (2N) and input-gradient (2N) through every decoder matrix, weight gradients only for
trained matrices, and the V×H output projection forward and backward only where a label is.
Attention-score FLOPs (~4 % at these lengths) and padding are not counted. Before timing, each
configuration's warm-up step passes the first-step gradient guard (fa_adapt.grad_check): every group
of trainable tensors got a non-zero gradient, and no 4-bit layer is in the gradient-dropping layout.
Every configuration runs once per compute dtype (--dtypes; default fp32, plus bf16 where the CPU
has avx512_bf16/amx_bf16 or on a GPU): the frozen weights and NF4 compute in it, autocast for the
rest, trained tensors fp32, as `adapt finetune --dtype` does. The fraction is of the same dtype's
1024² matmul rate, measured at the start and end of this run (the higher of the two).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path
from typing import Any

if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
    # a fixed mmap threshold returns freed tensors to the OS, so each configuration's peak
    # resident memory is its own, not inflated by the previous one's retained heap
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "1048576"
    os.execv(sys.executable, [sys.executable, *sys.argv])

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("COLUMNS", "200")  # the results table is wide; do not squeeze it to 80
from _common import (  # noqa: E402
    DTYPE_NAMES,
    load_average,
    machine,
    matmul_peak_flops,
    report,
    require_device,
    reset_peak_rss,
    rss_mib,
)
from _fa_adapt import (  # noqa: E402
    check_gpu_flags,
    decoder_linear_params,
    model_path,
    output_projection,
    quiet,
)
from _train_setups import (  # noqa: E402
    METHODS,
    Counting,
    build,
    clock_callback,
    measured_rows,
    training_args,
)


def run_config(config: str, args: argparse.Namespace, model_name: str | None) -> dict[str, Any]:
    """Build one configuration, warm it up, train one epoch over the measured rows; return its figures."""
    import torch

    cuda = args.device.startswith("cuda")
    load_before = load_average()
    t0 = time.perf_counter()
    b = build(config, model_name, args.batch_size, args.max_length, args.trl_token_rows)
    load_s = time.perf_counter() - t0
    measured, warm = measured_rows(b["tokenizer"], args.max_length, args.rows, args.batch_size)
    clock = clock_callback()
    from fa_adapt.grad_check import GradientGuard

    # every configuration must train what it claims: its warm-up step stops the benchmark if any
    # group of trainable tensors got no gradient (fa_adapt.grad_check)
    guard = GradientGuard()
    if cuda:
        clock.sync = torch.cuda.synchronize
    out = f"/tmp/bench-fa-train-{os.getpid()}"
    if b["setup"] == "trl":
        from datasets import Dataset
        from trl import SFTTrainer

        targs = training_args(out, args.batch_size, b["lr"], args.device, False, b["dtype"], trl=True)
        batch = args.batch_size
        # TRL prepares (and would re-tokenize) the dataset it is given: give it all rows at once, split after
        rows = warm + measured
        ds = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
        trainer = SFTTrainer(
            model=b["model"],
            args=targs,
            train_dataset=ds,
            processing_class=b["tokenizer"],
            peft_config=b["peft_config"],
            callbacks=[clock, guard],
        )
        warm_ds = trainer.train_dataset.select(range(len(warm)))
        measured_ds = trainer.train_dataset.select(range(len(warm), len(rows)))
    else:
        batch = b["batch"]
        targs = training_args(out, batch, b["lr"], args.device, b["grouped"], b["dtype"])
        trainer = b["cls"](
            model=b["model"], args=targs, data_collator=b["collator"], callbacks=[clock, guard]
        )
        measured_ds, warm_ds = measured, warm
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # its end-of-train dict would clutter the table output
    model = trainer.model
    counter = Counting(trainer.data_collator)
    trainer.data_collator = counter
    # warm-up: one step on other rows (first-call allocations, kernel selection)
    trainer.train_dataset = warm_ds
    trainer.args.max_steps = 1
    trainer.train()
    counter.batches.clear()
    trainer.train_dataset = measured_ds
    trainer.args.max_steps = -1
    gc.collect()
    resident = rss_mib()
    reset_peak_rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    wall = clock.end - clock.begin
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mib("VmHWM")
    counts = {k: sum(x[k] for x in counter.batches) for k in ("rows", "padded", "real", "trained")}
    n_virtual = 0
    peft_cfg = getattr(model, "active_peft_config", None)
    if peft_cfg is not None and getattr(peft_cfg, "is_prompt_learning", False):
        n_virtual = peft_cfg.num_virtual_tokens
    params = decoder_linear_params(model)
    vocab, hidden = output_projection(model)
    n_all = params["frozen"] + params["trainable"]
    flops = (4 * n_all + 2 * params["trainable"]) * (counts["real"] + n_virtual * counts["rows"])
    flops += 4 * vocab * hidden * counts["trained"]
    result = {
        "config": config,
        "batch": batch,
        "steps": len(counter.batches),
        "rows": counts["rows"],
        "wall_s": wall,
        "assistant_tok_s": counts["trained"] / wall,
        "tokens_s": counts["real"] / wall,
        "padding_share": 1 - counts["real"] / counts["padded"],
        "peak_mib": peak,
        "resident_mib": resident if not cuda else torch.cuda.memory_allocated() / 2**20,
        "useful_gflop_s": flops / wall / 1e9,
        "load_s": load_s,
        "tokens": counts,
        "decoder_matrix_params": params,
        "output_projection": [vocab, hidden],
        "virtual_tokens": n_virtual,
        "first_step_grad_norms": guard.norms,
        "load_average": [load_before, load_average()],
    }
    del trainer, model, b
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--methods",
        default="lora",
        help="comma-separated of lora,prompt,freeze (default lora); each adds ours-M and source-M, lora adds trl-lora",
    )
    ap.add_argument(
        "--dtypes",
        default=None,
        help="comma-separated of fp32,bf16 (default: fp32, and bf16 where it is fast)",
    )
    ap.add_argument("--rows", type=int, default=6, help="conversations trained per configuration (default 6)")
    ap.add_argument("--batch-size", type=int, default=4, help="our batch size and TRL's (default 4)")
    ap.add_argument(
        "--max-length", type=int, default=160, help="truncation, and the source's fixed padded length"
    )
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--trl-token-rows", action="store_true", help="give TRL the ChatML token rows too (fails in TRL 1.16)"
    )
    ap.add_argument(
        "--gemma2-2b", action="store_true", help="a gemma-2-2b-it-sized model with random weights (GPU)"
    )
    args = ap.parse_args()
    require_device(args.device)
    check_gpu_flags(args.device, args.gemma2_2b)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        sys.exit(
            f"error: --methods: unknown method(s) {', '.join(bad) or '(none)'}; choose from {', '.join(METHODS)}"
        )
    if args.dtypes is None:
        from fa_adapt.device import cpu_bf16_flags

        args.dtypes = "fp32,bf16" if args.device.startswith("cuda") or cpu_bf16_flags() else "fp32"
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not args.dtypes or set(args.dtypes) - set(DTYPE_NAMES):
        sys.exit(f"error: --dtypes: choose from fp32,bf16, got {','.join(args.dtypes) or '(none)'}")
    if args.rows < 1 or args.batch_size < 1 or args.max_length < 8:
        sys.exit("error: --rows and --batch-size must be >= 1, --max-length >= 8")
    return args


def _configs(args: argparse.Namespace) -> tuple[list[str], str]:
    """setup-method-dtype names, ours and its baselines back to back (each ratio is measured minutes
    apart), and a note on TRL."""
    setups = {m: ["ours", "source", *(["trl"] if m == "lora" else [])] for m in args.methods}
    configs = [f"{s}-{m}-{d}" for m in args.methods for d in args.dtypes for s in setups[m]]
    try:
        import trl

        return configs, f"trl {trl.__version__}"
    except ImportError:
        note = "trl not installed (pip install trl): the TRL baseline was skipped"
        if any(c.startswith("trl-") for c in configs):
            print(f"note: {note}", file=sys.stderr)
        return [c for c in configs if not c.startswith("trl-")], note


def _peaks(args: argparse.Namespace) -> dict[str, float]:
    """GFLOP/s of a 1024² (GPU: 4096²) matmul in each dtype of the run."""
    n = 4096 if args.device.startswith("cuda") else 1024
    return {d: matmul_peak_flops(DTYPE_NAMES[d], n, args.device) / 1e9 for d in args.dtypes}


def _table(results: dict[str, dict[str, Any]], peaks: dict[str, float]) -> list[dict[str, Any]]:
    """One row per configuration, with its ratios against the baselines of the same method and dtype."""
    keys = ("config", "batch", "steps", "rows", "wall_s", "assistant_tok_s", "tokens_s", "padding_share")
    rows = []
    for c, r in results.items():
        setup, method, dtype = c.split("-")
        row = {k: r[k] for k in keys} | {"peak_mib": r["peak_mib"], "useful_gflop_s": r["useful_gflop_s"]}
        row["pct_of_peak"] = 100 * r["useful_gflop_s"] / peaks[dtype]
        for base in ("source", "trl"):
            other = results.get(f"{base}-{method}-{dtype}")
            if setup == "ours" and other:
                row[f"speed_vs_{base}"] = r["assistant_tok_s"] / other["assistant_tok_s"]
                row[f"memory_vs_{base}"] = r["peak_mib"] / other["peak_mib"]
        fp32 = results.get(f"{setup}-{method}-fp32")
        if dtype != "fp32" and fp32:
            row["speed_vs_fp32"] = r["assistant_tok_s"] / fp32["assistant_tok_s"]
        rows.append(row)
    return rows


def main() -> None:
    args = _args()
    configs, trl_note = _configs(args)
    quiet()
    import torch

    if args.device == "cpu":
        torch.manual_seed(0)
    started = load_average()
    peaks = [_peaks(args)]
    model_name = model_path(args.gemma2_2b)
    results: dict[str, dict[str, Any]] = {}
    for c in configs:
        print(f"[{time.strftime('%H:%M:%S')}] {c} …", file=sys.stderr)
        results[c] = r = run_config(c, args, model_name)
        print(
            f"  {r['wall_s']:.1f} s, {r['assistant_tok_s']:.2f} assistant tok/s, peak {r['peak_mib']:.0f} MiB",
            file=sys.stderr,
        )
    peaks.append(_peaks(args))
    best = {d: max(p[d] for p in peaks) for d in args.dtypes}
    meta = machine(args.device) | {
        "command": " ".join(["python", "bench/fa_adapt_train.py", *sys.argv[1:]]),
        "model": "gemma-2-2b-sized, random weights" if args.gemma2_2b else "gemma-3-270m (embedded), NF4",
        "dtypes": args.dtypes,
        "matmul_peak_gflop_s": {d: [p[d] for p in peaks] for d in args.dtypes},
        "load_average_start": started,
        "load_average_end": load_average(),
        "trl": trl_note,
        "trl_lora_config": "same r/alpha/dropout/target modules"
        + (
            ""
            if args.trl_token_rows
            else "; without the ChatML token rows (TRL 1.16 fused LM head: "
            "AttributeError: 'TrainableTokensWrapper' object has no attribute 'bias')"
        ),
        "details": results,
        "flop_formula": "(4*N_decoder_matrices + 2*N_trained_matrices) * (non-pad tokens + soft-prompt positions)"
        " + 4 * vocab * hidden * labeled tokens",
    }
    name = "fa_adapt_train" if args.methods == ["lora"] else "fa_adapt_train_" + "_".join(args.methods)
    if args.gemma2_2b:
        name += "_gemma2_2b"
    if args.rows != 6:  # the default run's file stays the one docs/benchmarks.md quotes
        name += f"_rows{args.rows}"
    report(name, "fa_adapt fine-tuning: one epoch over the same rows", _table(results, best), meta)


if __name__ == "__main__":
    main()
