"""Fault injection: SIGKILL at 20 seeded points inside the final write of the run folder. After
every kill the folder is either the new complete run (it loads) or an unfinished one (a one-line
error that says to resume, and the resume completes it): never a mix of files that loads."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow
FILES = ("config.json", "metrics.json", "loss.png", "summary.md", "tokenizer_config.json", "adapter")


def test_fa_adapt_run_folder_survives_a_kill_anywhere_in_its_final_write(
    tiny_model_dir, chat_jsonl, tmp_path, checks
):
    from fa_adapt import finetune, load_run

    def settings_for(name: str) -> dict:
        return dict(
            method="lora", model=str(tiny_model_dir), data=str(chat_jsonl), output=str(tmp_path / name),
            quantization="none", max_steps=2, batch_size=4, logging_steps=1,
        )  # fmt: skip

    def resume(out, settings):
        finetune(output=str(out), resume=True)

    got, want = checks.check_kills(
        "fa_adapt", settings_for, load_run, FILES, "resume it with: adapt finetune", resume
    )
    assert got["final_eval_loss"] == pytest.approx(want["final_eval_loss"], abs=1e-6)
