"""`--device` on every fa_adapt command: what a CPU machine can check of the device handling (the
GPU path runs in bench/gpu_check.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from adapt.cli import app
from adapt.errors import UserError


def test_auto_is_the_cpu_here_and_a_missing_gpu_is_one_line(monkeypatch):
    import torch

    from fa_adapt.device import choose_dtype, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == resolve_device("cpu") == torch.device("cpu")
    # fp32 on CPUs without avx512_bf16/amx_bf16, bf16 on those with (tests/fa_adapt/test_dtype.py)
    assert choose_dtype(torch.device("cpu"), "fp32").dtype == torch.float32
    with pytest.raises(UserError, match="--device cuda: this machine has no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(UserError, match="--device: unknown value 'tpu'"):
        resolve_device("tpu")


def test_more_torchrun_processes_than_gpus_is_one_line(monkeypatch):
    # seen on a 1-GPU H100 (2026-11-26): `torchrun --nproc_per_node 2` failed in rank 1 with CUDA's
    # "invalid device ordinal" from inside the model load. The GPU count is the one thing faked here.
    import torch

    from fa_adapt.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(
        UserError, match="LOCAL_RANK=1 of a launch with more processes than this machine's 1 GPU"
    ):
        resolve_device("auto")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index is taken as asked
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_device("auto") == torch.device("cuda", 0)


@pytest.mark.parametrize(
    "args",
    [
        ["finetune", "--device", "cuda:0", "--output", "x"],
        ["generate", "base", "سلام", "--device", "cuda"],
        ["chat", "base", "--device", "cuda"],
        ["compare", "--device", "cuda"],
        ["evaluate", "base", "--device", "cuda"],
        ["export", "nowhere", "--device", "cuda"],
    ],
)
def test_every_command_takes_device(args, monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    # export names the missing run first; every other command stops on the device before loading
    expected = "nowhere: does not exist" if args[0] == "export" else "this machine has no CUDA GPU"
    assert expected in result.output and "Traceback" not in result.output


def test_trained_tensors_are_fp32_when_the_model_is_half_precision(tiny_model_dir):
    import torch

    from fa_adapt.device import upcast_trainable
    from fa_adapt.loading import load_model
    from fa_adapt.methods import get_method

    model = load_model(str(tiny_model_dir), quantization="none", dtype=torch.bfloat16, device="cpu")
    model = get_method("freeze").apply(model, [model.config.vocab_size - 1])
    assert upcast_trainable(model) > 0
    dtypes = {(p.requires_grad, p.dtype) for p in model.parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}  # the freeze layers included


def test_a_model_on_the_cpu_device_answers(tiny_model_dir):
    from fa_adapt.chatml import add_chatml_tokens
    from fa_adapt.generation import generate, model_device
    from fa_adapt.loading import load_model, load_tokenizer

    model = load_model(str(tiny_model_dir), quantization="none", for_training=False, device="cpu")
    tok = load_tokenizer(str(tiny_model_dir))
    add_chatml_tokens(tok, model)
    assert model_device(model).type == "cpu"
    assert generate(model, "سلام", tokenizer=tok, max_new_tokens=3).tokens >= 1
