"""Slow: each decoder, trained briefly on real Flickr8k photos, learns (validation loss falls
clearly) and captions validation images with real vocabulary words about what is in them."""

import csv
import json

import pytest

from capkit.data import load_dataset
from capkit.training import TrainConfig, train
from capkit.vocab import clean_caption

N_TRAIN, N_VAL = 240, 30  # a subset keeps feature extraction + 3 trainings within the CI budget


@pytest.fixture(scope="module")
def subset(flickr_sample, tmp_path_factory):
    """A captions.csv + split files over a slice of the real sample (images read in place)."""
    root = tmp_path_factory.mktemp("sample")
    ds = load_dataset(flickr_sample)
    train_recs, val_recs = ds.split("train")[:N_TRAIN], ds.split("val")[:N_VAL]
    for rec in train_recs + val_recs:
        (root / rec.image.name).symlink_to(rec.image)
    with open(root / "captions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption"])
        for rec in train_recs + val_recs:
            for c in rec.captions:
                w.writerow([rec.image.name, c])
    (root / "Flickr_8k.trainImages.txt").write_text("\n".join(r.image.name for r in train_recs))
    (root / "Flickr_8k.devImages.txt").write_text("\n".join(r.image.name for r in val_recs))
    return root


@pytest.mark.slow
# lstm only in CI: the three together exceed the 7-minute budget on the shared 2-core machine;
# attention and transformer were measured on the full sample (see docs/capkit.md).
@pytest.mark.parametrize("decoder", ["lstm"])
def test_decoder_learns_on_real_photos(subset, tmp_path, decoder):
    cfg = TrainConfig(
        data=str(subset),
        decoder=decoder,
        epochs=4,
        batch_size=32,
        output=str(tmp_path / decoder),
        cache_dir=str(subset / ".cache"),
    )
    out = train(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_val_loss"] < metrics["initial_val_loss"] - 2.0, metrics["history"]
    assert metrics["best_val_loss"] < 4.6, metrics["history"]
    vocab = set(json.loads((out / "word_to_id.json").read_text()))
    mentions = 0
    for sample in metrics["samples"]:
        words = sample["generated"].split()
        assert 2 <= len(words) <= cfg.max_length and set(words) <= vocab, sample
        reference_words = {w for c in sample["references"] for w in clean_caption(c).split()}
        content = set(words) - {"a", "an", "the", "is", "are", "in", "on", "of", "with", "and", "<unk>"}
        mentions += bool(content & reference_words)
    assert mentions >= len(metrics["samples"]) - 1, metrics["samples"]
