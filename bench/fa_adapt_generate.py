"""Generation speed per compute dtype: base, LoRA (unmerged / merged), prompt-tuned with and without the KV cache.

    python bench/fa_adapt_generate.py [--dtypes fp32,bf16] [--run RUN] [--prompts 3] [--new-tokens 16]
                                      [--threads 1] [--device cuda] [--gemma2-2b]

One NF4 model in one process, the same Persian prompts (the source's comparison set, first
--prompts of them, one left-padded batch), greedy, exactly --new-tokens new tokens per prompt (end
tokens do not stop it), after a 2-token warm-up of each configuration; the fastest of --repeat (3) runs. Adapters are freshly
initialised (speed does not depend on training): LoRA r=16 on q/v, prompt tuning 20 virtual tokens.
  base              the NF4 model with the ChatML rows, 4-bit layers as `adapt` loads them for inference
                    (bitsandbytes' packed AVX512-BF16 CPU layout where the CPU has the flag)
  base-unpacked     the same model with the packing switched off (the layout training must use)
  lora              PEFT LoRA wrapper, adapters applied on every step (how `adapt` loads a LoRA run)
  lora-merged       the same adapters merged into the weights (`merge_and_unload`)
  prompt            prompt tuning the way fa_adapt generates: base model generate with the soft
                    prompt as input embeddings, KV cache on
  prompt-no-cache   the source's workaround: PEFT's generate with use_cache=False
  run               (with --run RUN) a trained run folder, loaded exactly as `adapt generate RUN` loads it
Every configuration runs once per compute dtype (--dtypes; default fp32, plus bf16 where the CPU has
avx512_bf16/amx_bf16 or on a GPU), as `--dtype` would load it. The first dtype is the baseline:
each configuration's tokens/s is also reported over the same configuration in that dtype, and
the later dtypes' answers are compared with the baseline's: the share of new tokens the other
dtype's model also picks when fed the baseline's answer (teacher-forced top-1 agreement), and
the shared prefix of the two greedy answers.
Ratios: each configuration's tokens/s over base's; prompt over prompt-no-cache; base over
base-unpacked decides `fa_adapt.loading.PACKED_INFERENCE`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("COLUMNS", "200")  # the results table is wide; do not squeeze it to 80
from _common import DTYPE_NAMES, load_average, machine, matmul_peak_flops, report, require_device  # noqa: E402
from _fa_adapt import check_gpu_flags, model_path, quiet  # noqa: E402


def _prompts(n: int) -> list[str]:
    import fa_adapt

    path = Path(fa_adapt.__file__).parent / "data" / "prompts_fa.txt"
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return lines[:n]


def _timed_generate(fn: Any, device: str) -> tuple[Any, float]:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=3, help="how many of the source's 6 prompts (default 3)")
    ap.add_argument("--new-tokens", type=int, default=16, help="new tokens per prompt (default 16)")
    ap.add_argument(
        "--repeat", type=int, default=3, help="timed runs per configuration, fastest kept (default 3)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared 2-core machine, 2 threads wait on each other at every "
        "small decoding op whenever another process holds a core — measured 14 s vs 2.5 s for 4 tokens)",
    )
    ap.add_argument(
        "--dtypes", default=None, help="comma-separated of fp32,bf16 (default: fp32, and bf16 where fast)"
    )
    ap.add_argument(
        "--run", default=None, help="also a trained run folder, loaded as `adapt generate RUN` loads it"
    )
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--gemma2-2b", action="store_true", help="a gemma-2-2b-it-sized model with random weights (GPU)"
    )
    args = ap.parse_args()
    require_device(args.device)
    check_gpu_flags(args.device, args.gemma2_2b)
    if not 1 <= args.prompts <= 6 or args.new_tokens < 2 or args.repeat < 1:
        sys.exit("error: --prompts must be 1..6, --new-tokens >= 2, --repeat >= 1")
    if args.run and not (Path(args.run) / "config.json").is_file():
        sys.exit(f"error: --run {args.run}: not a run folder (no config.json)")
    if args.dtypes is None:
        from fa_adapt.device import cpu_bf16_flags

        fast = args.device.startswith("cuda") or bool(cpu_bf16_flags())
        args.dtypes = "fp32,bf16" if fast else "fp32"
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not args.dtypes or set(args.dtypes) - {"fp32", "bf16"}:
        sys.exit(f"error: --dtypes: choose from fp32,bf16, got {','.join(args.dtypes)}")
    return args


class Bench:
    """The prompts, decoding settings and results of one benchmark run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results: dict[str, dict[str, Any]] = {}
        self.answers: dict[str, Any] = {}  # config name -> greedy output ids (prompt + new tokens)
        self.prompts = _prompts(args.prompts)

    def encode(self, tok: Any, device: Any) -> dict[str, Any]:
        from fa_adapt.generation import _encode_left_padded, as_messages, prompt_text

        enc = _encode_left_padded(tok, [prompt_text(tok, as_messages(p)) for p in self.prompts])
        return {k: v.to(device) for k, v in enc.items()}

    @staticmethod
    def kw(pad: int, n: int, cache: bool = True) -> dict[str, Any]:
        # eos None + min_new_tokens: exactly n tokens whatever the model predicts
        return dict(
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            use_cache=cache,
            pad_token_id=pad,
            eos_token_id=None,
        )

    def measure(self, name: str, fn: Any) -> None:
        args = self.args
        print(f"[{time.strftime('%H:%M:%S')}] {name} …", file=sys.stderr)
        before = load_average()
        fn(2)  # warm-up
        # the fastest of --repeat runs: the one least disturbed by the other users of a shared machine
        runs = [_timed_generate(lambda: fn(args.new_tokens), args.device) for _ in range(args.repeat)]
        out, seconds = min(runs, key=lambda r: r[1])
        n_new = out.shape[1] - fn.prompt_width
        assert n_new == args.new_tokens, (name, n_new)
        self.answers[name] = out[:, fn.prompt_width :].cpu()
        self.results[name] = {
            "config": name,
            "prompts": len(self.prompts),
            "new_tokens": n_new,
            "seconds": seconds,
            "all_seconds": [r[1] for r in runs],
            "tokens_s": len(self.prompts) * n_new / seconds,
            "load_average": [before, load_average()],
        }
        print(f"  {self.results[name]['tokens_s']:.2f} tok/s", file=sys.stderr)

    def agreement(self, name: str, baseline: str, model: Any, enc: dict[str, Any]) -> dict[str, float]:
        """How far `model` (config `name`) agrees with config `baseline`'s greedy answers."""
        import torch

        ref = self.answers[baseline].to(enc["input_ids"].device)
        ids = torch.cat([enc["input_ids"], ref], dim=1)
        mask = torch.cat([enc["attention_mask"], torch.ones_like(ref)], dim=1)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        picked = logits[:, enc["input_ids"].shape[1] - 1 : -1].argmax(-1)
        own = self.answers[name].to(ref.device)
        same = (own == ref).int().cumprod(dim=1).sum(dim=1).float()  # shared greedy prefix per prompt
        return {
            "teacher_forced_top1_agreement": float((picked == ref).float().mean()),
            "shared_greedy_prefix": float(same.mean()),
            "identical_answers": float((same == ref.shape[1]).float().mean()),
        }


def _plain(bench: Bench, model: Any, enc: dict[str, Any], pad: int) -> Any:
    def fn(n: int) -> Any:
        return model.generate(**enc, **bench.kw(pad, n))

    fn.prompt_width = enc["input_ids"].shape[1]
    return fn


def _prompt_configs(bench: Bench, model: Any, enc: dict[str, Any], pad: int, dtype: str) -> Any:
    """prompt and prompt-no-cache in `dtype`; returns the base model again (the soft prompt unloaded)."""
    from peft import PromptTuningConfig, TaskType, get_peft_model

    from fa_adapt.generation import _prompt_tuning_inputs

    prompt_model = get_peft_model(
        model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=20)
    )
    prompt_model.eval()
    inputs = _prompt_tuning_inputs(prompt_model, enc, pad)

    def with_cache(n: int) -> Any:
        return prompt_model.get_base_model().generate(**inputs, **bench.kw(pad, n))

    with_cache.prompt_width = inputs["input_ids"].shape[1]

    def no_cache(n: int) -> Any:
        return prompt_model.generate(**enc, **bench.kw(pad, n, cache=False))

    # PEFT's generate returns the prompt ids (without virtual positions) followed by the new tokens
    no_cache.prompt_width = enc["input_ids"].shape[1]
    bench.measure(f"prompt-{dtype}", with_cache)
    bench.measure(f"prompt-no-cache-{dtype}", no_cache)
    return prompt_model.unload() if hasattr(prompt_model, "unload") else prompt_model.get_base_model()


def _lora_configs(bench: Bench, model: Any, enc: dict[str, Any], pad: int, dtype: str) -> None:
    """lora (unmerged, as `adapt` loads a LoRA run) and lora-merged in `dtype`."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    from fa_adapt.quant_layout import keep_trainable_layout, use_inference_layout

    torch.manual_seed(0)
    lora = get_peft_model(
        model,
        LoraConfig(task_type=TaskType.CAUSAL_LM, r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]),
    )
    lora.eval()
    bench.measure(f"lora-{dtype}", _plain(bench, lora, enc, pad))
    # PEFT dequantizes the 4-bit weight to merge into it, and bitsandbytes' dequantize_4bit reads a
    # packed weight as if it were plain (garbage): unpack first, merge, then let it pack again
    keep_trainable_layout(lora)
    merged = lora.merge_and_unload()
    use_inference_layout(merged, packed=True)
    merged.eval()
    bench.measure(f"lora-merged-{dtype}", _plain(bench, merged, enc, pad))


def _one_dtype(bench: Bench, dtype: str) -> int:
    """Every configuration in `dtype`; returns how many 4-bit layers the base model packed."""
    from fa_adapt.generation import load_base, load_target
    from fa_adapt.quant_layout import packed_layers, use_inference_layout

    args, base_dtype = bench.args, bench.args.dtypes[0]
    target = load_base(model_path(args.gemma2_2b), device=args.device, dtype=dtype)
    model, tok = target.model, target.tokenizer
    enc = bench.encode(tok, model.device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    use_inference_layout(model, packed=False)
    bench.measure(f"base-unpacked-{dtype}", _plain(bench, model, enc, pad))
    use_inference_layout(model, packed=True)  # packs at the next (warm-up) call where the CPU can
    bench.measure(f"base-{dtype}", _plain(bench, model, enc, pad))
    packed_count = len(packed_layers(model))
    if dtype != base_dtype:
        bench.results[f"base-{dtype}"].update(
            bench.agreement(f"base-{dtype}", f"base-{base_dtype}", model, enc)
        )

    model = _prompt_configs(bench, model, enc, pad, dtype)
    _lora_configs(bench, model, enc, pad, dtype)
    del target, model
    if args.run:
        run = load_target(args.run, device=args.device, dtype=dtype)
        enc = bench.encode(run.tokenizer, run.model.device)
        bench.measure(f"run-{dtype}", _plain(bench, run.model, enc, pad))
        if dtype != base_dtype:
            bench.results[f"run-{dtype}"].update(
                bench.agreement(f"run-{dtype}", f"run-{base_dtype}", run.model, enc)
            )
    return packed_count


def _rows(bench: Bench) -> list[dict[str, Any]]:
    results, base_dtype = bench.results, bench.args.dtypes[0]
    rows = []
    for name, r in results.items():
        config, _, dtype = name.rpartition("-")
        row = {k: r[k] for k in ("config", "prompts", "new_tokens", "seconds", "tokens_s")}
        row["vs_base"] = r["tokens_s"] / results[f"base-{dtype}"]["tokens_s"]
        if dtype != base_dtype:
            row[f"vs_{base_dtype}"] = r["tokens_s"] / results[f"{config}-{base_dtype}"]["tokens_s"]
        if config == "prompt":
            row["vs_no_cache"] = r["tokens_s"] / results[f"prompt-no-cache-{dtype}"]["tokens_s"]
        if config == "base":
            row["vs_unpacked"] = r["tokens_s"] / results[f"base-unpacked-{dtype}"]["tokens_s"]
        for key in ("teacher_forced_top1_agreement", "shared_greedy_prefix"):
            if key in r:
                row[key] = r[key]
        rows.append(row)
    return rows


def main() -> None:
    args = _args()
    quiet()
    import torch

    torch.set_num_threads(args.threads)
    from fa_adapt.quant_layout import cpu_can_pack

    bench = Bench(args)
    started = load_average()
    peaks = {d: matmul_peak_flops(DTYPE_NAMES[d], 1024, args.device) / 1e9 for d in args.dtypes}
    packed = {d: _one_dtype(bench, d) for d in args.dtypes}
    meta = machine(args.device) | {
        "command": " ".join(["python", "bench/fa_adapt_generate.py", *sys.argv[1:]]),
        "model": "gemma-2-2b-sized, random weights, NF4"
        if args.gemma2_2b
        else "gemma-3-270m (embedded), NF4",
        "run": args.run,
        "dtypes": args.dtypes,
        "matmul_peak_gflop_s_1024": peaks,
        "prompts": bench.prompts,
        "decoding": "greedy, fixed new-token count (no end-token stop, no n-gram rule), one left-padded batch",
        "packing_available": cpu_can_pack(),
        "packed_4bit_layers_in_base": packed,
        "load_average_start": started,
        "load_average_end": load_average(),
        "details": bench.results,
    }
    name = "fa_adapt_generate" + ("_gemma2_2b" if args.gemma2_2b else "")
    report(name, "fa_adapt generation speed (tokens/s)", _rows(bench), meta)


if __name__ == "__main__":
    main()
