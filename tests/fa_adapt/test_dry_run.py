"""`adapt finetune --dry-run`: the source's table 1.2 from gemma-2-2b-it's shipped config, offline,
without weights."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from adapt.cli import app


def _table(*args: str) -> dict:
    result = CliRunner().invoke(app, ["finetune", "--dry-run", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_sources_parameter_counts_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may come from the hub
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "empty-cache"))  # and no local model is needed
    table = _table("--model", "gemma-2-2b", "--method", "all")
    rows = {r["method"]: r for r in table["rows"]}
    assert rows["prompt"]["trainable"] == 46_080  # 20 virtual tokens × 2,304
    assert rows["lora (source: q/v)"]["trainable"] == 3_194_880  # r 16 on q_proj and v_proj, 26 layers
    # the default is all-linear: r 16 × (in + out) of q, k, v, o, gate, up, down, summed, × 26 layers
    assert rows["lora"]["trainable"] == 16 * (4352 + 3328 + 3328 + 4352 + 3 * 11520) * 26 == 20_766_720
    assert rows["lora"]["chatml_rows"] == rows["freeze"]["chatml_rows"] == 2 * 2_304
    assert rows["prompt"]["chatml_rows"] == 0  # PEFT's prompt tuning cannot train token rows
    assert {r["total"] for r in rows.values()} == {2_614_341_888}  # gemma-2-2b-it as published
    assert (
        round(rows["lora (source: q/v)"]["percent"], 3) == 0.122
        and round(rows["prompt"]["percent"], 4) == 0.0018
    )
    assert not (tmp_path / "empty-cache").exists()  # no model was built or converted


def test_method_settings_change_the_table(tiny_model_dir):
    lora, source = _table("--model", "gemma-2-2b", "--lora-r", "8")["rows"]
    assert lora["trainable"] == 20_766_720 // 2 and source["trainable"] == 3_194_880 // 2
    only = _table("--model", "gemma-2-2b", "--target-modules", "q_proj,v_proj")["rows"]
    assert [r["trainable"] for r in only] == [3_194_880]  # targets given: no second row
    prompt = _table("--model", str(tiny_model_dir), "--method", "prompt", "--num-virtual-tokens", "5")[
        "rows"
    ][0]
    assert prompt["trainable"] == 5 * 64  # the tiny model's hidden size
