"""Comparison: answers of several models side by side, parameter table, combined loss plot (tiny models)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from adapt.errors import UserError
from fa_adapt.compare import answer_table, default_prompts_path, run_facts, write_comparison
from fa_adapt.evaluation import read_prompts
from fa_adapt.generation import Target

_spec = importlib.util.spec_from_file_location("fa_tiny_chat", Path(__file__).with_name("tiny_chat.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


def _fake_run(folder: Path, method: str, params: int, curve: list) -> Path:
    """A run folder's config.json / metrics.json as `adapt finetune` writes them (no weights needed here)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"method": method, "model": None}))
    metrics = {
        "trainable_params": params,
        "total_params": 268_000_000,
        "trainable_percent": 100 * params / 268_000_000,
        "final_eval_loss": curve[-1][1] + 0.1,
        "train_loss": curve,
        "eval_loss": [[s, v + 0.1] for s, v in curve],
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_default_prompts_are_the_sources_six():
    prompts = read_prompts(default_prompts_path())
    assert len(prompts) == 6 and prompts[0] == "یک داستان کوتاه بگو"


def test_answer_table_and_written_files(tmp_path):
    model, tok = tiny.model_and_tokenizer()
    loaders = [lambda: Target("base", model, tok), lambda: Target("lora (r1)", tiny.lora(model), tok)]
    prompts = ["سلام", "یک شعر | فارسی بنویسید"]
    table = answer_table(loaders, prompts, max_new_tokens=6)
    assert list(table) == ["base", "lora (r1)"]
    assert all(
        len(rows) == 2 and set(rows[0]) == {"prompt", "answer", "stopped", "tokens"}
        for rows in table.values()
    )
    assert table["base"] != table["lora (r1)"]

    runs = [
        _fake_run(tmp_path / "r1", "lora", 3_194_880, [[1, 3.0], [2, 2.5]]),
        _fake_run(tmp_path / "r2", "prompt", 46_080, [[1, 4.0], [2, 3.8]]),
    ]
    written = write_comparison(tmp_path / "out", prompts, table, runs)
    assert {p.name for p in written} == {"compare.json", "compare.md", "loss_compare.png"}
    data = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert data["prompts"] == prompts and data["answers"] == table
    assert [r["method"] for r in data["runs"]] == ["lora", "prompt"]
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| prompt | base | lora (r1) |" in md
    assert "یک شعر \\| فارسی بنویسید" in md  # a pipe in a prompt does not break the table
    assert "3,194,880" in md and "46,080" in md
    assert (tmp_path / "out" / "loss_compare.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_run_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a run folder"):
        run_facts(tmp_path)
    assert run_facts(_fake_run(tmp_path / "r", "freeze", 10, [[1, 1.0]]))["method"] == "freeze"
