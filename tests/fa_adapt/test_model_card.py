"""Model cards, generated from the run's own files: a run folder, after `adapt evaluate`, and an
`adapt export` folder. Their front matter is what the Hugging Face hub reads."""

from __future__ import annotations

import json

import yaml


def _card(folder):
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def test_run_evaluate_and_export_write_cards_from_their_files(tiny_model_dir, chat_jsonl, tmp_path):
    from fa_adapt import finetune
    from fa_adapt.evaluation import run_evaluation
    from fa_adapt.export import export_run

    out = finetune(
        method="lora", model=str(tiny_model_dir), data=str(chat_jsonl), output=str(tmp_path / "run"),
        quantization="none", max_steps=4, eval_steps=2, lr=1e-2,
    )  # fmt: skip
    meta, body = _card(out)
    assert meta["base_model"] == str(tiny_model_dir) and meta["library_name"] == "peft"
    assert meta["language"] == ["fa"] and meta["pipeline_tag"] == "text-generation" and "lora" in meta["tags"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"{metrics['final_eval_loss']:.4f}" in body and f"{metrics['trainable_params']:,}" in body
    assert "![loss](loss.png)" in body and "Intended use and limits" in body and "| held-out " not in body

    report = run_evaluation(
        str(out), chat_jsonl, None, with_base=False, output=out / "eval.json", batch_size=8
    )
    _, body = _card(out)
    assert f"held-out loss | {report['run']['loss']:.4g}" in body  # evaluate refreshed the card
    saved = json.loads((out / "eval.json").read_text())["settings"]  # the settings it ran with
    assert saved["data"] == str(chat_jsonl) and saved["batch_size"] == 8 and saved["with_base"] is False
    # chrF of the answers to the held-out questions, each answer kept beside its reference
    assert 0 <= report["run"]["chrf"] <= 100 and saved["chrf"] is True
    assert 0 <= report["run"]["heldout_stop_rate"] <= 1 and 0 <= report["run"]["heldout_prompt_echo"] <= 1
    heldout = report["heldout_answers"]["run"]
    assert heldout and all(a["reference"] and "answer" in a for a in heldout)
    assert f"held-out chrf | {report['run']['chrf']:.4g}" in body
    without = run_evaluation(
        str(out), chat_jsonl, None, False, tmp_path / "e.json", max_new_tokens=4, chrf=False
    )
    assert "chrf" not in without["run"] and "heldout_answers" not in without

    from fa_adapt.compare import compare

    compare([out], ["سلام"], tmp_path / "cmp", with_base=False, max_new_tokens=3)
    settings = json.loads((tmp_path / "cmp" / "config.json").read_text())
    assert (
        settings["runs"] == [str(out)] and settings["max_new_tokens"] == 3 and settings["prompts"] == ["سلام"]
    )

    merged = export_run(out, tmp_path / "merged", dtype="float32")
    meta, body = _card(merged)
    assert meta["library_name"] == "transformers" and meta["base_model"] == str(tiny_model_dir)
    assert "AutoModelForCausalLM" in body and f"{metrics['final_eval_loss']:.4f}" in body
