"""Fault injection: SIGKILL at 20 seeded points inside the final write of the run folder. After
every kill the folder is either the new complete run (it loads) or an unfinished one (a one-line
error that says to resume, and the resume completes it): never a mix of files that loads."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow
FILES = ("config.json", "metrics.json", "loss.png", "samples.png", "summary.md", "decoder.safetensors")


def test_capkit_run_folder_survives_a_kill_anywhere_in_its_final_write(tiny_data, tmp_path, checks):
    from capkit import load_captioner
    from capkit.training import TrainConfig, train

    def settings_for(name: str) -> dict:
        return dict(
            data=str(tiny_data), decoder="lstm", epochs=1, batch_size=8, min_count=1,
            output=str(tmp_path / name), cache_dir=str(tmp_path / "cache"),
            decoder_config={"embed_dim": 16, "hidden_dim": 16},
        )  # fmt: skip

    def resume(out, settings):
        train(TrainConfig(**settings), resume=True)

    got, want = checks.check_kills("capkit", settings_for, load_captioner, FILES, "has not finished", resume)
    losses = [(h["train_loss"], h["val_loss"]) for h in got["history"]]
    assert losses == [(h["train_loss"], h["val_loss"]) for h in want["history"]]
