"""`adapt finetune --system-prompt`: the run trains with the system message, records it, and is
answered and scored with it by default (issue 19's recipe study compares it with none)."""

from __future__ import annotations

import json

import pytest

SYSTEM = "به فارسی، کوتاه و دقیق پاسخ بده."


def test_with_system_adds_a_system_message_only_where_there_is_none():
    from fa_adapt.chatml import with_system

    plain = [{"role": "user", "content": "سلام"}, {"role": "assistant", "content": "سلام!"}]
    own = [{"role": "system", "content": "خودش"}, *plain]
    got = with_system([plain, own], SYSTEM)
    assert got[0] == [{"role": "system", "content": SYSTEM}, *plain]
    assert got[1] == own  # a conversation's own system message is kept
    assert with_system([plain], None) == [plain] and with_system([plain], "") == [plain]
    assert plain[0]["role"] == "user"  # the input is not changed in place


def test_a_run_trains_with_its_system_prompt_and_is_scored_with_it(tiny_model_dir, tmp_path):
    from transformers import TrainerCallback

    from fa_adapt import finetune
    from fa_adapt.chatml import with_system
    from fa_adapt.data import load_conversations
    from fa_adapt.evaluation import heldout_loss, run_evaluation
    from fa_adapt.generation import load_target

    chat_jsonl = tmp_path / "no_system.jsonl"  # like conftest's chat_jsonl, without its system turns
    rows = [
        {"message": [{"role": "user", "content": f"سوال شماره {i}: پایتخت ایران کجاست؟"},
                     {"role": "assistant", "content": f"پاسخ {i}: تهران پایتخت ایران است."}]}
        for i in range(24)
    ]  # fmt: skip
    chat_jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    seen: list[list[int]] = []

    class FirstBatch(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kw):
            seen.extend(next(iter(train_dataloader))["input_ids"].tolist())

    out = finetune(
        method="lora", model=str(tiny_model_dir), data=str(chat_jsonl), output=str(tmp_path / "run"),
        quantization="none", max_steps=2, batch_size=4, system_prompt=SYSTEM, callbacks=[FirstBatch()],
    )  # fmt: skip
    target = load_target(str(out), dtype="fp32")
    texts = target.tokenizer.batch_decode(seen)
    assert texts and all(f"<|im_start|>system\n{SYSTEM}<|im_end|>" in text for text in texts)
    assert json.loads((out / "config.json").read_text())["system_prompt"] == SYSTEM
    assert SYSTEM in (out / "summary.md").read_text()

    assert target.system == SYSTEM
    convs, _ = load_conversations(chat_jsonl)
    with_it, _ = heldout_loss(target.model, with_system(convs, SYSTEM), tokenizer=target.tokenizer)
    without, _ = heldout_loss(target.model, convs, tokenizer=target.tokenizer)
    assert with_it != pytest.approx(without, rel=1e-6)  # the system turn changes what the model sees
    report = run_evaluation(str(out), chat_jsonl, None, with_base=False, output=tmp_path / "eval.json",
                            chrf=False, dtype="fp32")  # fmt: skip
    assert report["run"]["loss"] == pytest.approx(with_it, rel=1e-5)  # scored as it was trained
