"""Training through 4-bit layers stays correct on every CPU, and a run that would train nothing stops.

On a tiny Gemma 3 loaded 4-bit (NF4): after each evaluation inside `finetune`, no `Linear4bit` is in
(or may switch to) bitsandbytes' packed CPU layout, which has no autograd; the first-step guard stops
a run whose gradient path is cut with a one-line error and exit 2. The layout checks read the switch
the fix sets, so they hold on CPUs with and without AVX512-BF16.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fa_adapt.grad_check import GradientCheckError
from fa_adapt.quant_layout import cpu_can_pack

_spec = importlib.util.spec_from_file_location("fa_probes", Path(__file__).with_name("probes.py"))
probes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probes)


def _settings(tiny_model_dir, chat_jsonl, out, method="lora"):
    return dict(
        method=method,
        model=str(tiny_model_dir),
        data=str(chat_jsonl),
        output=str(out),
        quantization="nf4",
        max_steps=4,
        batch_size=4,
        eval_steps=2,
        logging_steps=1,
        lr=1e-2 if method == "lora" else 5e-2,
    )


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_4bit_layers_keep_trainable_layout_through_evaluations(
    tiny_model_dir, chat_jsonl, tmp_path, monkeypatch, method
):
    import bitsandbytes.nn.modules

    from fa_adapt import finetune

    # every Linear4bit starts as on an AVX512-BF16 CPU (bitsandbytes' switch on), whatever this CPU is
    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: True)
    probe = probes.TrainingProbe()
    finetune(callbacks=[probe], **_settings(tiny_model_dir, chat_jsonl, tmp_path / method, method))
    assert len(probe.layouts) == 3  # step 0, 2 and 4
    for layouts in probe.layouts:
        assert len(layouts) == 14  # q, k, v, o, gate, up, down in 2 layers
        assert not any(may or packed for may, packed in layouts.values()), layouts
    # and the gradient reaches the method's own tensors after each evaluation
    group = "LoRA A/B" if method == "lora" else "prompt encoder"
    assert all(probe.grad_norms[step][group] > 0 for step in (1, 2, 3, 4)), probe.grad_norms


def _cut_lora_path(model):
    """A deliberately broken run: every LoRA branch's output detached from the graph."""
    for name, module in model.named_modules():
        if name.endswith("lora_B.default"):
            module.register_forward_hook(lambda _m, _i, out: out.detach())
    return model


def test_guard_stops_a_run_whose_gradient_path_is_cut(tiny_model_dir, chat_jsonl, tmp_path, monkeypatch):
    import fa_adapt.training as training

    prepare = training.prepare_model

    def broken(cfg):
        model, *rest = prepare(cfg)
        return (_cut_lora_path(model), *rest)

    monkeypatch.setattr(training, "prepare_model", broken)
    with pytest.raises(GradientCheckError, match="the LoRA A/B got no gradient at the first step"):
        training.finetune(**_settings(tiny_model_dir, chat_jsonl, tmp_path / "cut"))
    assert not (tmp_path / "cut" / "config.json").exists()  # no run folder that looks complete

    from typer.testing import CliRunner

    from adapt.cli import app

    args = ["finetune", "--model", str(tiny_model_dir), "--data", str(chat_jsonl), "--quantization", "nf4"]
    result = CliRunner().invoke(app, [*args, "--max-steps", "2", "--output", str(tmp_path / "cli")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "LoRA A/B got no gradient" in errors[0], result.output


@pytest.mark.skipif(not cpu_can_pack(), reason="bitsandbytes packs 4-bit weights only on AVX512-BF16 CPUs")
def test_guard_stops_a_run_with_the_layout_fix_switched_off(
    tiny_model_dir, chat_jsonl, tmp_path, monkeypatch
):
    import fa_adapt.quant_layout as quant_layout
    from fa_adapt import finetune

    monkeypatch.setattr(quant_layout, "keep_trainable_layout", lambda model: 0)
    with pytest.raises(GradientCheckError, match="packed CPU inference layout"):
        finetune(**_settings(tiny_model_dir, chat_jsonl, tmp_path / "unfixed"))


def test_keep_trainable_layout_unpacks_a_packed_layer():
    """On a packing CPU the layer is packed by an eval call and unpacked by the fix; elsewhere the
    switch alone is checked. Either way the input gets its gradient afterwards."""
    import bitsandbytes as bnb
    import torch

    from fa_adapt.quant_layout import is_packed, keep_trainable_layout, may_pack

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(256, 128, bias=False, quant_type="nf4", compute_dtype=torch.float32)
    layer.weight = bnb.nn.Params4bit(torch.randn(128, 256), requires_grad=False, quant_type="nf4")._quantize(
        "cpu"
    )
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(2, 256))
    assert is_packed(layer) == cpu_can_pack()
    assert keep_trainable_layout(layer) == 1
    assert not is_packed(layer) and not may_pack(layer)
    layer.train()
    x = torch.randn(2, 256, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(2, 256))
    assert not is_packed(layer)  # the switch stays off
