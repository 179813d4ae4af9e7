"""Bad flags and paths through the real CLI: exit 2, one line naming the flag, the valid choices."""

from __future__ import annotations

import signal

import pytest
from typer.testing import CliRunner

from adapt.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")

LAYOUTS = ["captions.txt + Images/", "Flickr8k.token.txt + Flicker8k_Dataset/", "captions.csv"]

# (arguments with {data}, {image}, {tmp} placeholders, what the one error line must contain)
CASES = {
    "unknown encoder": (
        ["caption-train", "{data}", "--encoder", "nonsense", "--output", "{tmp}/run"],
        ["--encoder: unknown encoder 'nonsense'", "efficientnet_lite0", "efficientnet_b0", "torchvision"],
    ),
    "unknown decoder": (
        ["caption-train", "{data}", "--decoder", "gru", "--output", "{tmp}/run"],
        ["--decoder: unknown value 'gru'", "attention, lstm, transformer"],
    ),
    "unknown decoding (caption)": (
        ["caption", "{image}", "--decoding", "sampling"],
        ["--decoding: unknown value 'sampling'", "beam, greedy, no-repeat"],
    ),
    "unknown decoding (caption-eval)": (
        ["caption-eval", "default", "{data}", "--decoding", "sampling"],
        ["--decoding: unknown value 'sampling'", "beam, greedy, no-repeat"],
    ),
    "model not a run (caption)": (
        ["caption", "{image}", "--model", "{tmp}"],
        ["--model {tmp}: not a capkit run folder (missing decoder.safetensors", "caption-train", "`default`"],
    ),
    "model not a run (caption-eval)": (
        ["caption-eval", "{tmp}", "{data}"],
        [
            "RUN {tmp}: not a capkit run folder (missing decoder.safetensors",
            "caption-train",
            "`default` or `knn`",
        ],
    ),
    "resume a folder that is not a run": (
        ["caption-train", "{data}", "--output", "{tmp}/never-trained", "--resume"],
        ["--resume: {tmp}/never-trained/checkpoint.pt not found"],
    ),
    "resume a damaged checkpoint": (
        ["caption-train", "{data}", "--output", "{tmp}/damaged", "--resume"],
        ["--resume: {tmp}/damaged/checkpoint.pt cannot be read"],
    ),
    "batch size 0": (
        ["caption-train", "{data}", "--batch-size", "0", "--output", "{tmp}/run"],
        ["--batch-size must be greater than 0, got 0"],
    ),
    "negative epochs": (
        ["caption-train", "{data}", "--epochs", "-2", "--output", "{tmp}/run"],
        ["--epochs must be greater than 0, got -2"],
    ),
    "wrong caption columns": (
        ["caption-train", "{tmp}/columns", "--output", "{tmp}/run"],
        ["{tmp}/columns/captions.csv: line 1: expected the header 'image,caption', found file,text"],
    ),
    "missing data path (caption-train)": (
        ["caption-train", "{tmp}/nowhere", "--output", "{tmp}/run"],
        ["PATH {tmp}/nowhere: dataset path does not exist", *LAYOUTS],
    ),
    "missing data path (caption-eval)": (
        ["caption-eval", "default", "{tmp}/nowhere"],
        ["PATH {tmp}/nowhere: dataset path does not exist", *LAYOUTS],
    ),
    "missing data path (caption-data)": (
        ["caption-data", "{tmp}/nowhere", "--out", "{tmp}/stats"],
        ["PATH {tmp}/nowhere: dataset path does not exist", *LAYOUTS],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_flag_is_one_line_naming_it(tiny_data, tmp_path, case):
    args, needles = CASES[case]
    (tmp_path / "columns").mkdir()
    (tmp_path / "columns" / "captions.csv").write_text("file,text\n00.jpg,a red square\n")
    (tmp_path / "columns" / "00.jpg").write_bytes((tiny_data / "00.jpg").read_bytes())
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "checkpoint.pt").write_bytes(b"PK\x03\x04 half of a checkpoint")
    fill = {"data": str(tiny_data), "image": str(tiny_data / "00.jpg"), "tmp": str(tmp_path)}
    sigterm = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(app, [a.format(**fill) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle.format(**fill) in lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "stats").exists()  # no work was started
    assert signal.getsignal(signal.SIGTERM) is sigterm  # caption-train puts the old handler back
