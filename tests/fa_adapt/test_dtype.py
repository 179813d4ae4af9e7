"""`--dtype auto|fp32|bf16`: bf16 only where the CPU has the instructions for it, trained tensors
fp32 always, and a bf16 run that learns what the fp32 run learns (within a stated tolerance)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adapt.cli import app
from adapt.errors import UserError

AVX2 = {"avx2": True, "avx512f": False, "avx512_bf16": False, "amx_bf16": False}
AVX512_BF16 = {**AVX2, "avx512f": True, "avx512_bf16": True}
AMX = {**AVX512_BF16, "amx_bf16": True}

# bf16 keeps 8 bits of mantissa: the same run's losses agree to a few parts in a thousand on the
# tiny model (measured: 0.1-0.4 %); 2 % leaves room for other CPUs' summation orders
LOSS_TOLERANCE = 0.02


@pytest.mark.parametrize(
    "cpu, expected", [(AVX2, "fp32"), (AVX512_BF16, "bf16"), (AMX, "bf16"), ({}, "fp32")]
)
def test_auto_picks_bf16_only_where_the_cpu_has_the_flag(cpu, expected):
    import torch

    from fa_adapt.device import choose_dtype

    choice = choose_dtype(torch.device("cpu"), "auto", cpu=cpu)
    assert choice.name == expected
    flag = "amx_bf16" if cpu.get("amx_bf16") else "avx512_bf16"
    assert (f"the CPU has {flag}" in choice.reason) == (expected == "bf16")
    # the flags given always win
    assert choose_dtype(torch.device("cpu"), "fp32", cpu=cpu).name == "fp32"
    forced = choose_dtype(torch.device("cpu"), "bf16", cpu=cpu)
    assert forced.name == "bf16" and ("slower" in forced.reason) == (expected == "fp32")


def test_auto_on_this_machine_follows_its_cpuinfo():
    import torch

    from adapt.environment import cpu_description
    from fa_adapt.device import choose_dtype

    cpu = cpu_description()
    has_bf16 = bool(cpu.get("avx512_bf16") or cpu.get("amx_bf16"))
    assert choose_dtype(torch.device("cpu")).name == ("bf16" if has_bf16 else "fp32")


def test_a_wrong_dtype_is_one_line_before_any_model_loads(tmp_path):
    import torch

    from fa_adapt.device import choose_dtype

    with pytest.raises(UserError, match="--dtype: unknown value 'fp8'"):
        choose_dtype(torch.device("cpu"), "fp8")
    for args in (
        ["finetune", "--output", str(tmp_path / "x")],
        ["generate", "base", "سلام"],
        ["evaluate", "base"],
    ):
        result = CliRunner().invoke(app, [*args, "--dtype", "fp8"])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert "--dtype" in result.output and "fp8" in result.output


def _train(tiny_model_dir, chat_jsonl, out, dtype, quantization="nf4"):
    from fa_adapt import finetune

    return finetune(
        method="lora", model=str(tiny_model_dir), data=str(chat_jsonl), output=str(out), compute_dtype=dtype,
        quantization=quantization, max_steps=6, eval_steps=3, batch_size=4, lr=5e-3, lora_dropout=0.0,
    )  # fmt: skip


def test_bf16_training_learns_what_fp32_learns_with_fp32_trained_tensors(
    tiny_model_dir, chat_jsonl, tmp_path
):
    """One NF4 LoRA run per dtype from the same seed: both pass the gradient check (every trainable
    group, the 4-bit layers' LoRA included), both lower the validation loss, and the bf16 losses are
    within LOSS_TOLERANCE of the fp32 ones; the bf16 run's trained tensors stayed fp32."""
    import torch
    from safetensors.torch import load_file

    runs = {d: _train(tiny_model_dir, chat_jsonl, tmp_path / d, d) for d in ("fp32", "bf16")}
    metrics = {d: json.loads((out / "metrics.json").read_text()) for d, out in runs.items()}
    for d, m in metrics.items():
        assert m["compute_dtype"] == d and m["compute_dtype_reason"].startswith(f"--dtype {d}")
        assert json.loads((runs[d] / "config.json").read_text())["compute_dtype"] == d
        assert f"compute dtype: {d} (--dtype {d}" in (runs[d] / "summary.md").read_text()
        assert m["final_eval_loss"] < m["initial_eval_loss"]  # each run learned
        groups = m["gradient_check"]["first_step_grad_norms"]
        assert set(groups) == {"ChatML rows", "LoRA A/B"} and all(n > 0 for n in groups.values())
    for key in ("initial_eval_loss", "final_eval_loss"):
        assert metrics["bf16"][key] == pytest.approx(metrics["fp32"][key], rel=LOSS_TOLERANCE)
    for d, out in runs.items():
        adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
        assert adapter and {t.dtype for t in adapter.values()} == {torch.float32}, d
        # LoRA's B matrices start at zero: the trained ones moved away from it
        assert all(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k), d


def test_a_bf16_model_loads_bf16_frozen_weights_and_fp32_adapters(tiny_model_dir):
    """LoRA on a bf16 4-bit model keeps the frozen norms and embedding bf16 (PEFT's fp32 cast is for
    fp16 only) and trains fp32 adapters; an fp32 model is fp32 throughout."""
    import torch

    from fa_adapt.config import resolve_config
    from fa_adapt.training import prepare_model

    for dtype, frozen in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        cfg = resolve_config(method="lora", model=str(tiny_model_dir), output="unused", compute_dtype=dtype)
        model = prepare_model(cfg)[0]
        floats = {(p.requires_grad, p.dtype) for p in model.parameters() if p.dtype.is_floating_point}
        assert floats == {(True, torch.float32), (False, frozen)}, dtype
