"""Training step time with the ChatML rows trained by PEFT's token layer against fa_adapt's row-only forward.

    python bench/fa_adapt_token_rows.py [--methods lora,freeze] [--batches 4] [--repeat 2] [--device cuda]

One model per method (the embedded Gemma 3 270M, NF4, as `adapt finetune` builds it), the same
batches of 4 bundled Persian conversations for both forwards, alternating PEFT / row-only per
batch so load on the shared machine hits both alike. A step is forward (fa_adapt's labeled loss) and
backward, without an update so that both forwards see the same weights (the optimizer's step is the
same for both); the figure is the total over all batches, fastest of --repeat passes.
The loss and the gradient norm of every step are compared too: the two forwards compute the same
function (tests/fa_adapt/test_token_rows.py checks gradients exactly on a small model).
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
from _fa_adapt import quiet, use_peft_token_forward  # noqa: E402


def _set_forward(model: Any, row_only: bool) -> None:
    from fa_adapt.token_rows import use_row_only_forward

    if row_only:
        use_row_only_forward(model)
    else:
        use_peft_token_forward(model)


def _step(model: Any, batch: dict[str, Any], sync: Any) -> tuple[float, float, float]:
    import torch

    from fa_adapt.labeled_loss import labeled_loss

    sync()
    start = time.perf_counter()
    loss, _ = labeled_loss(model, batch)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
    model.zero_grad(set_to_none=True)
    sync()
    return time.perf_counter() - start, loss.item(), norm


def run_method(method: str, n_batches: int, repeat: int, device: str) -> list[dict[str, Any]]:
    import torch

    from fa_adapt import data as chat_data
    from fa_adapt import training
    from fa_adapt.collator import ChatCollator
    from fa_adapt.config import resolve_config

    cfg = resolve_config(method=method, output="/dev/null")
    model, tokenizer, _, _ = training.prepare_model(cfg)
    model.to(device).train()
    conversations, stats = chat_data.load_conversations(None)
    rows = chat_data.tokenize_conversations(tokenizer, conversations, cfg.max_length, stats)
    collate = ChatCollator(tokenizer.pad_token_id)
    rows = rows[: 4 * (n_batches + 1)]
    batches = [{k: v.to(device) for k, v in collate(rows[i : i + 4]).items()} for i in range(0, len(rows), 4)]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    _set_forward(model, True)
    _step(model, batches[0], sync)  # warm-up
    best = {"peft": float("inf"), "row-only": float("inf")}
    checks: dict[str, list[tuple[float, float]]] = {"peft": [], "row-only": []}
    for _ in range(repeat):
        total = {"peft": 0.0, "row-only": 0.0}
        checks = {"peft": [], "row-only": []}
        for i, batch in enumerate(batches[1:]):
            for name in ("peft", "row-only"):
                _set_forward(model, name == "row-only")
                torch.manual_seed(i)  # the same LoRA dropout masks for both forwards
                seconds, loss, norm = _step(model, batch, sync)
                total[name] += seconds
                checks[name].append((loss, norm))
        best = {k: min(best[k], total[k]) for k in best}
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[1:])
    same_loss = max(abs(a[0] - b[0]) for a, b in zip(checks["peft"], checks["row-only"], strict=True))
    same_norm = max(
        abs(a[1] - b[1]) / max(a[1], 1e-12) for a, b in zip(checks["peft"], checks["row-only"], strict=True)
    )
    rows_out = []
    for name in ("peft", "row-only"):
        rows_out.append(
            {
                "config": f"{method}, {name}",
                "batches": len(batches) - 1,
                "tokens": tokens,
                "step s (mean)": best[name] / (len(batches) - 1),
                "tokens/s": tokens / best[name],
                "speed vs peft": best["peft"] / best[name],
                "max |Δloss|": same_loss,
                "max rel Δ grad norm": same_norm,
            }
        )
    del model
    return rows_out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="lora,freeze", help="comma-separated of lora,freeze (default both)")
    ap.add_argument("--batches", type=int, default=4, help="timed batches of 4 conversations (default 4)")
    ap.add_argument("--repeat", type=int, default=2, help="passes; the fastest counts (default 2)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    require_device(args.device)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in ("lora", "freeze")]
    if bad:
        print(
            f"error: --methods: {bad[0]!r} has no ChatML token layer to compare (lora, freeze)",
            file=sys.stderr,
        )
        sys.exit(2)
    quiet()
    before = load_average()
    rows = [row for m in methods for row in run_method(m, args.batches, args.repeat, args.device)]
    meta = {**machine(args.device), "load_average": [before, load_average()], "args": vars(args)}
    report(
        "fa_adapt_token_rows", "ChatML rows: PEFT token layer vs row-only forward (train step)", rows, meta
    )


if __name__ == "__main__":
    main()
