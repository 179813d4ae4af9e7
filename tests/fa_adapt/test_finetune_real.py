"""End to end on the real Gemma 3 270M in 4-bit NF4: each strategy trains a few steps, the
validation loss falls, the run folder is complete and loads back."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

RUN_FILES = ("config.json", "metrics.json", "loss.png", "summary.md", "tokenizer_config.json")


@pytest.mark.parametrize(
    ("method", "lr"),
    # higher rates than the defaults so that four steps move the loss clearly
    [("lora", 2e-3), ("prompt", 1e-1), ("freeze", 2e-4)],
)
def test_real_model_learns_and_loads_back(tmp_path, method, lr):
    import fa_adapt

    out = fa_adapt.finetune(
        method=method,
        output=str(tmp_path / method),
        max_steps=4,
        lr=lr,
        max_train_rows=36,
        batch_size=4,
        max_length=96,
        logging_steps=1,
        eval_steps=4,
    )
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4
    assert metrics["final_eval_loss"] < metrics["initial_eval_loss"]
    assert 0 < metrics["trainable_percent"] < 100
    run = fa_adapt.load_run(out)
    assert run.method == method
    assert run.tokenizer.convert_tokens_to_ids("<|im_end|>") != run.tokenizer.unk_token_id
