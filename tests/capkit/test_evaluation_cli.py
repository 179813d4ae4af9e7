"""`adapt caption-eval`: several models and decodings in one table, files written, real data."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapt.cli import app
from adapt.runio import temporary_prefix
from capkit.evaluation import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")

# The tiny run-folder and photo helpers live beside this file (tests import in importlib mode).
_spec = importlib.util.spec_from_file_location(
    "caption_cli_helpers", Path(__file__).with_name("test_caption_cli.py")
)
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

CAPTIONS = [
    "A dog runs on the grass .",
    "Two children play in the water .",
    "A man rides a bike down the road .",
    "A brown dog is running",
    "Kids splash in a pool",
]


def tiny_dataset(root: Path) -> Path:
    """Kaggle layout with Flickr split files: 6 train and 3 val photos, 2 captions each."""
    photos = helpers.make_photos(root / "Images", 9)
    rows = ["image,caption"] + [
        f"{p.name},{CAPTIONS[(i + j) % 5]}" for i, p in enumerate(photos) for j in range(2)
    ]
    (root / "captions.txt").write_text("\n".join(rows) + "\n")
    (root / "Flickr_8k.trainImages.txt").write_text("\n".join(p.name for p in photos[:6]) + "\n")
    (root / "Flickr_8k.devImages.txt").write_text("\n".join(p.name for p in photos[6:]) + "\n")
    return root


def test_caption_eval_compares_runs_decodings_and_knn(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPKIT_CACHE", str(tmp_path / "cache"))
    data = tiny_dataset(tmp_path / "data")
    run = helpers.make_run(tmp_path / "att")
    out = tmp_path / "eval"
    args = [
        str(run),
        "knn",
        str(data),
        "--decoding",
        "greedy",
        "--decoding",
        "beam",
        "--no-meteor",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, ["caption-eval", *args])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "comparison.json").read_text())
    assert [(r["model"], r["decoding"]) for r in rows] == [
        ("att", "greedy"),
        ("att", "beam-3"),
        ("knn", "retrieval"),
    ]
    for r in rows:
        assert r["images"] == 3 and r["metrics"]["meteor"] is None
        assert all(math.isfinite(v) for k, v in r["metrics"].items() if k != "meteor")
        folder = out / f"{r['model']}-{r['decoding']}"
        assert len(json.loads((folder / "eval.json").read_text())["predictions"]) == 3
        assert (folder / "predictions.png").read_bytes()[:4] == b"\x89PNG"
    # knn returns training captions (cleaned); the table names every row.
    knn = json.loads((out / "knn-retrieval" / "eval.json").read_text())
    assert {p["caption"] for p in knn["predictions"]} <= {c.lower().rstrip(" .") for c in CAPTIONS}
    assert "knn" in result.output and "beam-3" in result.output
    assert "| att | greedy |" in (out / "summary.md").read_text()
    config = json.loads((out / "config.json").read_text())  # the settings it ran with, beside the results
    assert config["models"] == [str(run), "knn"] and config["dataset"] == str(data) and not config["meteor"]
    assert [d["strategy"] for d in config["decodings"]] == ["greedy", "beam"]
    assert_comparison_chart(out / "compare.png")


def assert_comparison_chart(path: Path) -> None:
    """A whole PNG of the chart's size (1100×450 px), not a blank or truncated file."""
    import struct

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82")
    assert struct.unpack(">II", data[16:24]) == (1100, 450)
    assert 10_000 < len(data) < 400_000  # bars, labels and legend drawn; far from a photo's size
    assert not list(path.parent.glob(temporary_prefix(path.name) + "*"))  # atomic: no temporary file left


def test_caption_eval_user_errors(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    for args, needle in [
        ([str(data)], "at least one RUN"),
        (["knn", str(data), "--split", "train"], "knn is built from the train split"),
        (["knn", str(data), "--split", "dev"], "--split"),
        (["knn", str(data), "--decoding", "topk"], "--decoding"),
        (["knn", str(tmp_path / "nowhere")], "does not exist"),
    ]:
        result = CliRunner().invoke(app, ["caption-eval", *args, "--no-meteor", "--out", str(tmp_path / "e")])
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output and len(result.output.strip().splitlines()) == 1


def test_evaluate_api_writes_into_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPKIT_CACHE", str(tmp_path / "cache"))
    data = tiny_dataset(tmp_path / "data")
    run = helpers.make_run(tmp_path / "lstm", "lstm")
    result = evaluate(run, data, split="val", meteor=False)
    assert result["model"] == "lstm" and result["images"] == 3
    assert (run / "eval-val-greedy" / "eval.json").is_file()
    assert (run / "eval-val-greedy" / "predictions.png").is_file()


@pytest.mark.slow
def test_knn_on_real_validation_images_gives_finite_metrics(flickr_sample, tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app, ["caption-eval", "knn", str(flickr_sample), "--limit", "5", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    [row] = json.loads((out / "comparison.json").read_text())
    assert row["images"] == 5
    for key, value in row["metrics"].items():
        if key == "meteor" and value is None:
            assert any("Java" in n for n in row["notes"])
            continue
        assert math.isfinite(value) and 0 <= value <= 1000, key
    assert row["metrics"]["coco_bleu1"] > 10  # real retrieved captions share words with the references
