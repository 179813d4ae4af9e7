"""`adapt export`: a lora/freeze run merged into the unquantized base loads with transformers alone
and computes what the run computes; prompt tuning is refused with the reason."""

from __future__ import annotations

import json
import os

import pytest


def _train(method, tiny_model_dir, chat_jsonl, out, quantization="none"):
    from fa_adapt import finetune

    return finetune(
        method=method,
        model=str(tiny_model_dir),
        data=str(chat_jsonl),
        output=str(out),
        quantization=quantization,
        max_steps=4,
        batch_size=4,
        lr=1e-2 if method != "prompt" else 5e-2,
        logging_steps=2,
        eval_steps=4,
    )


def _logits(model, tok, text):
    import torch

    ids = torch.tensor([tok(text)["input_ids"]], device=model.device)  # auto is cuda on a GPU
    with torch.no_grad():
        return model(input_ids=ids).logits.float().cpu()


@pytest.mark.parametrize("method", ["lora", "freeze"])
def test_export_loads_with_transformers_and_matches_the_run(tiny_model_dir, chat_jsonl, tmp_path, method):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fa_adapt.export import export_run
    from fa_adapt.generation import load_base
    from fa_adapt.runs import load_run

    run_dir = _train(method, tiny_model_dir, chat_jsonl, tmp_path / method)
    out = export_run(run_dir, tmp_path / "merged", dtype="float32")
    assert not (out / "adapter_config.json").exists()  # a plain model, not an adapter
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    text = "<|im_start|>user\nسلام<|im_end|>\n<|im_start|>assistant\n"
    # the export is float32: compare it with the run computing in fp32 (auto is bf16 on CPUs with
    # avx512_bf16, and bf16 rounding alone is above the 1e-4 asked here)
    run = load_run(run_dir, quantization="none", dtype="fp32")
    got, want = _logits(merged, tok, text), _logits(run.model, run.tokenizer, text)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    base = load_base(str(tiny_model_dir), quantization="none")
    # the trained weights are in it, not only the ChatML rows: compare on plain text, old vocabulary
    plain, n_old = "سلام، حال شما چطور است؟", len(base.tokenizer) - 2
    changed = (
        _logits(merged, tok, plain)[..., :n_old] - _logits(base.model, base.tokenizer, plain)[..., :n_old]
    )
    assert changed.abs().max() > 1e-2
    # plain transformers gets the ChatML prompt fa_adapt uses, and stops at <|im_end|>
    messages = [{"role": "user", "content": "سلام"}]
    from fa_adapt.generation import prompt_text

    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == prompt_text(
        tok, messages
    )
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert merged.generation_config.eos_token_id[0] == im_end
    assert json.loads((out / "adapt_export.json").read_text())["method"] == method


def test_export_default_is_bf16_and_generates_through_adapt(tiny_model_dir, chat_jsonl, tmp_path):
    from safetensors import safe_open

    from fa_adapt.export import export_run
    from fa_adapt.generation import generate, load_target

    run_dir = _train("lora", tiny_model_dir, chat_jsonl, tmp_path / "lora", quantization="nf4")
    out = export_run(run_dir, tmp_path / "merged")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}
    target = load_target(str(out))  # `adapt generate MERGED ...` takes the folder too
    answer = generate(target.model, "سلام", tokenizer=target.tokenizer, max_new_tokens=5)
    assert answer.tokens > 0
    umask = os.umask(0o022)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~umask  # not mkdtemp's owner-only 0700
    assert ((out / "model.safetensors").stat().st_mode & 0o777) == 0o666 & ~umask
    # exporting again replaces the folder only when the new one is complete; no staging left over
    export_run(run_dir, out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_export_refuses_prompt_tuning_and_bad_flags(tiny_model_dir, chat_jsonl, tmp_path):
    from typer.testing import CliRunner

    from adapt.cli import app

    run_dir = _train("prompt", tiny_model_dir, chat_jsonl, tmp_path / "prompt")
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(run_dir), "--output", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "prompt-tuning run has no weights to merge" in result.output
    assert not (tmp_path / "m").exists()
    result = runner.invoke(app, ["export", str(run_dir), "--dtype", "int3"])
    assert result.exit_code == 2 and "--dtype" in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "nothing: does not exist" in result.output
