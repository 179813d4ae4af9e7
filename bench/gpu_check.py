"""GPU check: every fa_adapt method end to end on the embedded Gemma 3 270M in NF4, in minutes.

    python bench/gpu_check.py [--steps 40] [--device cuda] [--model PATH_OR_ID]

For each method (prompt, lora, freeze): `finetune` for `--steps` optimizer steps, then `generate`,
`evaluate` (held-out loss) and `export` (lora and freeze) of the run, all on the device. With two
or more GPUs, a 2-process DDP LoRA run through `torchrun` follows. Prints a table (tokens/s, peak
GPU memory, losses, seconds per stage) and writes bench/results/gpu_check.json with the card's
name. `--device cpu --steps 2` runs the same path on a CPU as a smoke test of the script.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, report  # noqa: E402


def _peak_gib(device: str) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def check_method(method: str, model: str | None, steps: int, device: str, work: Path) -> dict[str, Any]:
    """Train, generate, evaluate and export one method; the row of the table."""
    from fa_adapt import finetune
    from fa_adapt.evaluation import default_heldout_path, run_evaluation
    from fa_adapt.export import export_run
    from fa_adapt.generation import generate, load_target

    _reset_peak(device)
    started = time.perf_counter()
    out = finetune(
        method=method, model=model, output=str(work / method), max_steps=steps, device=device,
        eval_steps=max(1, steps // 2), logging_steps=max(1, steps // 8),
    )  # fmt: skip
    train_s = time.perf_counter() - started
    metrics = json.loads((out / "metrics.json").read_text())
    train_peak = _peak_gib(device)
    started = time.perf_counter()
    target = load_target(str(out), device=device)
    answer = generate(target.model, "ملکه الیزابت کیست؟", tokenizer=target.tokenizer, max_new_tokens=64)
    generate_s = time.perf_counter() - started
    report_ = run_evaluation(str(out), default_heldout_path(), None, with_base=False,
                             output=out / "eval.json", batch_size=8, device=device)  # fmt: skip
    exported = None
    if method != "prompt":
        started = time.perf_counter()
        export_run(out, work / f"{method}-merged", dtype="bfloat16", device=device)
        exported = round(time.perf_counter() - started, 1)
    return {
        "method": method,
        "steps": metrics["steps"],
        "validation loss": f"{metrics['initial_eval_loss']:.3f} → {metrics['final_eval_loss']:.3f}",
        "held-out loss": round(report_["run"]["loss"], 3),
        "train tokens/s": round(metrics["tokens_per_second"]),
        "train s": round(train_s, 1),
        "peak GPU GiB": train_peak,
        "answer tokens/s": round(answer.tokens / max(answer.seconds, 1e-9), 1),
        "answer stopped": answer.stopped,
        "generate s": round(generate_s, 1),
        "export s": exported,
    }


def check_ddp(model: str | None, steps: int, work: Path) -> dict[str, Any]:
    """A 2-process DDP LoRA run through torchrun; its row."""
    code = (
        "import sys, fa_adapt; fa_adapt.finetune(method='lora', model=sys.argv[1] or None, "
        f"output=sys.argv[2], max_steps={steps}, eval_steps={max(1, steps // 2)})"
    )
    script = work / "ddp_run.py"
    script.write_text(code)
    started = time.perf_counter()
    cmd = ["torchrun", "--nproc_per_node", "2", str(script), model or "", str(work / "ddp")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"DDP run failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((work / "ddp" / "metrics.json").read_text())
    return {
        "method": "lora DDP x2",
        "steps": metrics["steps"],
        "validation loss": f"{metrics['initial_eval_loss']:.3f} → {metrics['final_eval_loss']:.3f}",
        "train tokens/s": round(metrics["tokens_per_second"]),
        "train s": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default=None, help="default: the embedded Gemma 3 270M")
    args = parser.parse_args()
    from adapt.quiet import quiet_libraries

    quiet_libraries()  # before torch/transformers load: only our table and bars
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA GPU here (use --device cpu --steps 2 for a smoke test)")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        rows = [
            check_method(m, args.model, args.steps, args.device, work) for m in ("prompt", "lora", "freeze")
        ]
        if args.device.startswith("cuda") and torch.cuda.device_count() >= 2:
            rows.append(check_ddp(args.model, args.steps, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {
        "machine": machine(args.device),
        "steps": args.steps,
        "model": args.model or "embedded Gemma 3 270M (NF4)",
    }
    report("gpu_check", f"GPU check on {meta['machine'].get('gpu') or args.device}", rows, meta)


if __name__ == "__main__":
    main()
