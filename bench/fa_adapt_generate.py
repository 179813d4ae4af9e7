"""Generation speed: base, LoRA (unmerged / merged), prompt-tuned with and without the KV cache.

    python bench/fa_adapt_generate.py [--prompts 3] [--new-tokens 16] [--threads 1] [--device cuda] [--gemma2-2b]

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
from _common import load_average, machine, report, require_device  # noqa: E402
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


def main() -> None:
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
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--gemma2-2b", action="store_true", help="a gemma-2-2b-it-sized model with random weights (GPU)"
    )
    args = ap.parse_args()
    require_device(args.device)
    check_gpu_flags(args.device, args.gemma2_2b)
    if not 1 <= args.prompts <= 6 or args.new_tokens < 2 or args.repeat < 1:
        sys.exit("error: --prompts must be 1..6, --new-tokens >= 2, --repeat >= 1")
    quiet()
    import torch

    torch.set_num_threads(args.threads)
    from peft import LoraConfig, PromptTuningConfig, TaskType, get_peft_model

    from fa_adapt.generation import (
        _encode_left_padded,
        _prompt_tuning_inputs,
        as_messages,
        load_base,
        prompt_text,
    )

    started = load_average()
    target = load_base(model_path(args.gemma2_2b))
    model, tok = target.model, target.tokenizer
    device = args.device
    prompts = _prompts(args.prompts)
    enc = _encode_left_padded(tok, [prompt_text(tok, as_messages(p)) for p in prompts])
    enc = {k: v.to(model.device) for k, v in enc.items()}
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def kw(n: int, cache: bool = True) -> dict[str, Any]:
        # eos None + min_new_tokens: exactly n tokens whatever the model predicts
        return dict(
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            use_cache=cache,
            pad_token_id=pad,
            eos_token_id=None,
        )

    results: dict[str, dict[str, Any]] = {}

    def measure(name: str, fn: Any) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {name} …", file=sys.stderr)
        before = load_average()
        fn(2)  # warm-up
        # the fastest of --repeat runs: the one least disturbed by the other users of a shared machine
        runs = [_timed_generate(lambda: fn(args.new_tokens), device) for _ in range(args.repeat)]
        out, seconds = min(runs, key=lambda r: r[1])
        n_new = out.shape[1] - fn.prompt_width
        assert n_new == args.new_tokens, (name, n_new)
        results[name] = {
            "config": name,
            "prompts": len(prompts),
            "new_tokens": n_new,
            "seconds": seconds,
            "all_seconds": [r[1] for r in runs],
            "tokens_s": len(prompts) * n_new / seconds,
            "load_average": [before, load_average()],
        }
        print(f"  {results[name]['tokens_s']:.2f} tok/s", file=sys.stderr)

    def plain(m: Any) -> Any:
        def fn(n: int) -> Any:
            return m.generate(**enc, **kw(n))

        fn.prompt_width = enc["input_ids"].shape[1]
        return fn

    from fa_adapt.quant_layout import cpu_can_pack, keep_trainable_layout, packed_layers, use_inference_layout

    use_inference_layout(model, packed=False)
    measure("base-unpacked", plain(model))
    use_inference_layout(model, packed=True)  # packs at the next (warm-up) call where the CPU can
    measure("base", plain(model))
    packed_count = len(packed_layers(model))

    prompt_model = get_peft_model(
        model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=20)
    )
    prompt_model.eval()
    inputs = _prompt_tuning_inputs(prompt_model, enc, pad)

    def with_cache(n: int) -> Any:
        return prompt_model.get_base_model().generate(**inputs, **kw(n))

    with_cache.prompt_width = inputs["input_ids"].shape[1]

    def no_cache(n: int) -> Any:
        out = prompt_model.generate(**enc, **kw(n, cache=False))
        return out

    # PEFT's generate returns the prompt ids (without virtual positions) followed by the new tokens
    no_cache.prompt_width = enc["input_ids"].shape[1]
    measure("prompt", with_cache)
    measure("prompt-no-cache", no_cache)
    model = prompt_model.unload() if hasattr(prompt_model, "unload") else prompt_model.get_base_model()

    torch.manual_seed(0)
    lora = get_peft_model(
        model,
        LoraConfig(task_type=TaskType.CAUSAL_LM, r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]),
    )
    lora.eval()
    measure("lora", plain(lora))
    # PEFT dequantizes the 4-bit weight to merge into it, and bitsandbytes' dequantize_4bit reads a
    # packed weight as if it were plain (garbage): unpack first, merge, then let it pack again
    keep_trainable_layout(lora)
    merged = lora.merge_and_unload()
    use_inference_layout(merged, packed=True)
    merged.eval()
    measure("lora-merged", plain(merged))

    base_speed = results["base"]["tokens_s"]
    rows = []
    for name, r in results.items():
        row = {k: r[k] for k in ("config", "prompts", "new_tokens", "seconds", "tokens_s")}
        row["vs_base"] = r["tokens_s"] / base_speed
        if name == "prompt":
            row["vs_no_cache"] = r["tokens_s"] / results["prompt-no-cache"]["tokens_s"]
        if name == "base":
            row["vs_unpacked"] = r["tokens_s"] / results["base-unpacked"]["tokens_s"]
        rows.append(row)
    meta = machine(device) | {
        "command": " ".join(["python", "bench/fa_adapt_generate.py", *sys.argv[1:]]),
        "model": "gemma-2-2b-sized, random weights, NF4"
        if args.gemma2_2b
        else "gemma-3-270m (embedded), NF4",
        "prompts": prompts,
        "decoding": "greedy, fixed new-token count (no end-token stop, no n-gram rule), one left-padded batch",
        "packing_available": cpu_can_pack(),
        "packed_4bit_layers_in_base": packed_count,
        "load_average_start": started,
        "load_average_end": load_average(),
        "details": results,
    }
    name = "fa_adapt_generate" + ("_gemma2_2b" if args.gemma2_2b else "")
    report(name, "fa_adapt generation speed (tokens/s)", rows, meta)


if __name__ == "__main__":
    main()
