"""GPU check: every fa_adapt method end to end on the embedded Gemma 3 270M in NF4, in minutes.

    python bench/gpu_check.py [--steps 40] [--device cuda] [--model PATH_OR_ID]

For each method (prompt, lora, freeze): `finetune` for `--steps` optimizer steps, then `generate`,
`evaluate` (held-out loss, and chrF and stop rate of the answers to `--heldout`) and `export` (lora
and freeze) of the run, all on the device. Each row also says which compute dtype auto chose, how many
trainable groups got a gradient at the first step, and (lora) how many LoRA-B matrices moved off zero. With two
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


def _rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _grad_groups(metrics: dict[str, Any]) -> str:
    """How many trainable groups got a gradient at the first step, and the smallest norm."""
    norms = (metrics.get("gradient_check") or {}).get("first_step_grad_norms") or {}
    return f"{len(norms)} ({min(norms.values()):.2g})" if norms else "not run"


def _lora_b_moved(run: Path) -> str:
    """LoRA-B starts at zero: how many of the saved LoRA-B matrices training moved off it."""
    from safetensors.torch import load_file

    tensors = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    b = [t for name, t in tensors.items() if "lora_B" in name]
    return f"{sum(int(t.abs().max() > 0) for t in b)}/{len(b)}"


def check_method(
    method: str, model: str | None, steps: int, device: str, work: Path, heldout: str | None = None
) -> dict[str, Any]:
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
    started = time.perf_counter()
    report_ = run_evaluation(str(out), heldout or default_heldout_path(), None, with_base=False, output=out / "eval.json",
                             max_new_tokens=128, batch_size=16, device=device)  # fmt: skip
    evaluate_s = time.perf_counter() - started
    exported = None
    if method != "prompt":
        started = time.perf_counter()
        export_run(out, work / f"{method}-merged", dtype="bfloat16", device=device)
        exported = round(time.perf_counter() - started, 1)
    return {
        "method": method,
        "steps": metrics["steps"],
        "validation loss": f"{metrics['initial_eval_loss']:.3f} → {metrics['final_eval_loss']:.3f}",
        "dtype": metrics.get("compute_dtype"),
        "grad groups (min norm)": _grad_groups(metrics),
        "LoRA-B moved": _lora_b_moved(out) if method == "lora" else None,
        "held-out loss": round(report_["run"]["loss"], 3),
        "chrF": _rounded(report_["run"].get("chrf")),
        "stop rate": _rounded(report_["run"].get("heldout_stop_rate"), 2),
        "train tokens/s": round(metrics["tokens_per_second"]),
        "train s": round(train_s, 1),
        "peak GPU GiB": train_peak,
        "answer tokens/s": round(answer.tokens / max(answer.seconds, 1e-9), 1),
        "answer stopped": answer.stopped,
        "generate s": round(generate_s, 1),
        "evaluate s": round(evaluate_s, 1),
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
    parser.add_argument("--heldout", default=None, help="held-out JSONL (default: the packaged 110)")
    args = parser.parse_args()
    from adapt.quiet import quiet_libraries

    quiet_libraries()  # before torch/transformers load: only our table and bars
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA GPU here (use --device cpu --steps 2 for a smoke test)")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        rows = [
            check_method(m, args.model, args.steps, args.device, work, args.heldout)
            for m in ("prompt", "lora", "freeze")
        ]
        if args.device.startswith("cuda") and torch.cuda.device_count() >= 2:
            rows.append(check_ddp(args.model, args.steps, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {
        "machine": machine(args.device),
        "steps": args.steps,
        "model": args.model or "embedded Gemma 3 270M (NF4)",
        "heldout": args.heldout or "packaged (110 conversations)",
    }
    report("gpu_check", f"GPU check on {meta['machine'].get('gpu') or args.device}", rows, meta)


if __name__ == "__main__":
    main()
