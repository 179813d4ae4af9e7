"""Training end to end on a tiny generated dataset: run folder, load_captioner, resume, bad flags."""

import json
import os
import subprocess
import sys

import pytest
import torch

import capkit
from adapt.errors import UserError
from capkit.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(data, out, **kw):
    kw = {"epochs": 3, "batch_size": 8, "min_count": 1, **kw}
    return TrainConfig(data=str(data), output=str(out), cache_dir=str(out.parent / "cache"), **kw)


def test_train_writes_a_run_folder_that_loads_back(tiny_data, tmp_path):
    out = train(
        _cfg(tiny_data, tmp_path / "run", decoder="lstm", decoder_config={"embed_dim": 16, "hidden_dim": 16})
    )
    for name in (
        "decoder.safetensors",
        "word_to_id.json",
        "config.json",
        "metrics.json",
        "loss.png",
        "samples.png",
        "summary.md",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert metrics["best_val_loss"] < metrics["initial_val_loss"]
    assert len(metrics["samples"]) >= 1 and metrics["data"]["corrupt_images"] == 0
    captioner = capkit.load_captioner(out)
    assert captioner.encoder_name == "efficientnet_lite0" and not captioner.decoder.training
    assert len(captioner.vocab) == metrics["data"]["vocab_size"]
    assert captioner.encoder.feature_dim == 1280
    # its model card, from the run's own files, with front matter the Hugging Face hub reads
    import yaml

    front, body = (out / "README.md").read_text().removeprefix("---\n").split("\n---\n", 1)
    meta = yaml.safe_load(front)
    assert meta["pipeline_tag"] == "image-to-text" and "lstm" in meta["tags"] and meta["language"] == ["en"]
    assert f"→ {metrics['best_val_loss']} (epoch {metrics['best_epoch']}, kept)" in body
    assert metrics["samples"][0]["generated"] in body and "Intended use and limits" in body


def test_resume_reaches_the_same_final_state(tiny_data, tmp_path):
    tiny = {"width": 16, "heads": 2, "decoder_layers": 1}
    full = train(_cfg(tiny_data, tmp_path / "full", decoder="transformer", decoder_config=tiny, epochs=2))
    part = train(_cfg(tiny_data, tmp_path / "part", decoder="transformer", decoder_config=tiny, epochs=1))
    with pytest.raises(UserError, match="already holds a capkit run; pass --resume"):
        train(_cfg(tiny_data, part, decoder="transformer", epochs=3))
    with pytest.raises(UserError, match="decoder='transformer', not 'lstm'"):
        train(_cfg(tiny_data, part, decoder="lstm", epochs=3), resume=True)
    train(_cfg(tiny_data, part, decoder="transformer", epochs=2), resume=True)
    a, b = (json.loads((p / "metrics.json").read_text())["history"] for p in (full, part))
    assert [(h["epoch"], h["train_loss"], h["val_loss"]) for h in a] == [
        (h["epoch"], h["train_loss"], h["val_loss"]) for h in b
    ]


def test_resume_with_another_lr_trains_at_that_lr(tiny_data, tmp_path):
    """--resume --lr X is allowed (a lower rate to finish); the restored optimizer then runs at X."""
    from capkit.checkpoints import CHECKPOINT

    tiny = {"embed_dim": 16, "hidden_dim": 16}
    part = train(_cfg(tiny_data, tmp_path / "part", decoder="lstm", decoder_config=tiny, epochs=1, lr=1e-3))
    saved = torch.load(part / CHECKPOINT, map_location="cpu", weights_only=True)
    assert [g["lr"] for g in saved["optimizer"]["param_groups"]] == [1e-3]
    train(_cfg(tiny_data, part, decoder="lstm", epochs=2, lr=2.5e-4), resume=True)
    resumed = torch.load(part / CHECKPOINT, map_location="cpu", weights_only=True)
    assert [g["lr"] for g in resumed["optimizer"]["param_groups"]] == [2.5e-4]
    assert json.loads((part / "config.json").read_text())["lr"] == 2.5e-4


def test_corrupt_image_is_skipped_and_counted(tiny_data, tmp_path):
    (tiny_data / "03.jpg").write_bytes(b"garbage")
    out = train(
        _cfg(
            tiny_data,
            tmp_path / "run",
            decoder="attention",
            epochs=1,
            decoder_config={"embed_dim": 8, "hidden_dim": 8, "attention_dim": 8, "context_dim": 8},
        )
    )
    assert json.loads((out / "metrics.json").read_text())["data"]["corrupt_images"] == 1


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"decoder": "gru"}, "--decoder: unknown value 'gru'"),
        ({"batch_size": 0}, "--batch-size must be greater than 0"),
        ({"epochs": -1}, "--epochs"),
    ],
)
def test_bad_flags(tiny_data, tmp_path, kw, message):
    with pytest.raises(UserError, match=message):
        train(_cfg(tiny_data, tmp_path / "run", **kw))


def test_not_a_run_folder(tmp_path):
    with pytest.raises(UserError, match="not a capkit run folder"):
        capkit.load_captioner(tmp_path)
    with pytest.raises(UserError, match="--resume"):
        train(TrainConfig(data=str(tmp_path), output=str(tmp_path / "x")), resume=True)


@pytest.mark.slow
def test_torchrun_two_processes_write_one_run_folder(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "CAPKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "adapt",
        "caption-train",
        str(tiny_data),
        "--decoder",
        "lstm",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--min-count",
        "1",
        "--output",
        str(out),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(str(out)) == 2  # both ranks finish and name the same folder
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in metrics["history"])
    assert len(metrics["history"]) == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "checkpoint.pt",
            "config.json",
            "decoder.safetensors",
            "loss.png",
            "README.md",
            "metrics.json",
            "samples.png",
            "summary.md",
            "word_to_id.json",
        ]
    )


def test_output_folder_is_the_runs_own(tiny_data, tmp_path):
    tiny = {"embed_dim": 16, "hidden_dim": 16}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("notes")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="already holds files that are not a capkit run"):
            train(_cfg(tiny_data, mine, decoder="lstm", decoder_config=tiny, epochs=1), overwrite=overwrite)
    assert [p.name for p in mine.iterdir()] == ["thesis.txt"]
    out = train(_cfg(tiny_data, tmp_path / "run", decoder="lstm", decoder_config=tiny, epochs=1))
    first = (out / "decoder.safetensors").stat().st_mtime_ns
    out = train(_cfg(tiny_data, out, decoder="lstm", decoder_config=tiny, epochs=1), overwrite=True)
    assert (out / "decoder.safetensors").stat().st_mtime_ns != first
    assert not (out / ".adapt.lock").exists()


def test_the_transformer_learns_one_position_per_cell_of_any_encoder_grid(tiny_data, tmp_path):
    """Lite1 and Lite2 give 8×8 and 9×9 grids (64, 81 cells), more than Lite0's 49: the
    transformer is built for the encoder's grid, and the run loads back at that size."""
    from torch import nn

    from capkit.encoders import ENCODERS, Encoder, Preprocessing

    def nine_by_nine() -> Encoder:  # a fixed random stride-4 convolution of 36 px images: 9×9×4
        conv = nn.Conv2d(3, 4, 4, stride=4)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=torch.Generator().manual_seed(0)))
        trunk = nn.Sequential(conv, nn.ReLU())
        return Encoder("grid-9x9", trunk, trunk, None, Preprocessing(36, (0.5,) * 3, (0.5,) * 3))

    capkit.register_encoder("grid-9x9", nine_by_nine)
    try:
        tiny = {"width": 16, "heads": 2, "decoder_layers": 1}
        out = train(_cfg(tiny_data, tmp_path / "run", decoder="transformer", encoder="grid-9x9",
                         decoder_config=tiny, epochs=1))  # fmt: skip
        saved = json.loads((out / "config.json").read_text())["decoder_config"]
        assert saved == {**tiny, "grid_cells": 81}
        captioner = capkit.load_captioner(out)
        assert captioner.decoder.grid_pos.shape[1] == 81
        assert capkit.caption_images(captioner, [tiny_data / "00.jpg"])[0].caption
    finally:
        ENCODERS.pop("grid-9x9", None)
