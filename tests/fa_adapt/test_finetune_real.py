"""End to end on the real Gemma 3 270M in 4-bit NF4: each strategy trains a few steps; its own
tensors change (a falling loss alone proves nothing: the ChatML rows can lower it by themselves);
each trainable group gets a gradient after every evaluation; the validation loss falls; the run
folder is complete and loads back."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("fa_probes", Path(__file__).with_name("probes.py"))
probes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probes)

RUN_FILES = ("config.json", "metrics.json", "loss.png", "summary.md", "tokenizer_config.json")
# the groups each method trains (fa_adapt.grad_check.group_of)
GROUPS = {
    "lora": {"LoRA A/B", "ChatML rows"},
    "prompt": {"prompt encoder"},
    "freeze": {"unfrozen layers", "ChatML rows"},
}


def _assert_own_tensors_moved(method: str, probe) -> None:
    if method == "lora":
        lora_b = probe.moved("lora_B")  # zero at the start: moved means non-zero
        # all-linear (the default): q, k, v, o, gate, up and down in each of the 18 layers
        assert len(lora_b) == 7 * 18 and all(v > 0 for v in lora_b.values()), lora_b
    elif method == "prompt":
        prompt = probe.moved("prompt_encoder")
        assert prompt and all(v > 0 for v in prompt.values()), prompt
    else:
        layers = {n: v for n, v in probe.moved("layers.").items() if n.endswith("proj.weight")}
        assert {n.split("layers.")[1].split(".")[0] for n in layers} == {"0", "17"}
        assert len(layers) == 2 * 7 and all(v > 0 for v in layers.values()), layers


@pytest.mark.parametrize(
    ("method", "lr"),
    # higher rates than the defaults so that four steps move the loss clearly
    [("lora", 2e-3), ("prompt", 1e-1), ("freeze", 2e-4)],
)
def test_real_model_learns_and_loads_back(tmp_path, method, lr):
    import fa_adapt

    probe = probes.TrainingProbe()
    out = fa_adapt.finetune(
        callbacks=[probe],
        method=method,
        output=str(tmp_path / method),
        max_steps=4,
        lr=lr,
        max_train_rows=36,
        batch_size=4,
        max_length=96,
        logging_steps=1,
        eval_steps=2,  # evaluations at steps 0, 2 and 4: steps 1, 3 and 4 follow one
    )
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    _assert_own_tensors_moved(method, probe)
    for step in (1, 3, 4):
        norms = probe.grad_norms[step]
        assert set(norms) == GROUPS[method] and all(v > 0 for v in norms.values()), (step, norms)
    assert all(not packed for layouts in probe.layouts for _, packed in layouts.values())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4
    assert metrics["final_eval_loss"] < metrics["initial_eval_loss"]
    assert set(metrics["gradient_check"]["first_step_grad_norms"]) == GROUPS[method]
    assert 0 < metrics["trainable_percent"] < 100
    run = fa_adapt.load_run(out)
    assert run.method == method
    assert run.tokenizer.convert_tokens_to_ids("<|im_end|>") != run.tokenizer.unk_token_id
