"""Plug-ins from user code: an encoder, a decoder and a decoding defined here, registered with
`capkit.register_*`, trained, saved, loaded back, captioning and evaluated through the real CLI;
then the same run loaded in a process that never registered them, through entry points."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import capkit
from adapt.cli import app
from adapt.errors import UserError
from capkit.captioning import Decoding
from capkit.decoders import DECODERS, decoder_names
from capkit.decoders.base import Decoder, State
from capkit.decoding import STRATEGIES
from capkit.encoders import ENCODERS, Encoder, Preprocessing
from capkit.features import extract_features
from capkit.train_config import train_config_from

pytestmark = pytest.mark.usefixtures("one_thread")


class GRUDecoder(Decoder):
    """Mean-pooled image vector → GRU state; one GRU cell step per word."""

    default_lr = 3e-3

    def __init__(self, vocab_size: int, feature_dim: int, hidden_dim: int = 16, pad_id: int = 0):
        super().__init__()
        self.vocab_size, self.pad_id = vocab_size, pad_id
        self.image = nn.Linear(feature_dim, hidden_dim)
        self.embed = nn.Embedding(vocab_size, hidden_dim, padding_idx=pad_id)
        self.cell = nn.GRUCell(hidden_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def init_state(self, pooled: torch.Tensor, grid: torch.Tensor) -> State:
        return {"h": torch.tanh(self.image(pooled.float()))}

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h = self.cell(self.embed(tokens), state["h"])
        return self.out(h), {"h": h}

    def forward(self, pooled: torch.Tensor, grid: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        state, logits = self.init_state(pooled, grid), []
        for t in range(captions.shape[1]):
            step_logits, state = self.step(captions[:, t], state)
            logits.append(step_logits)
        return torch.stack(logits, 1)


def tiny_encoder() -> Encoder:
    """A fixed random 8×8, stride-8 convolution of 32 px images: a 4×4 grid of 8 features, the
    same weights on every load (a run stores only the encoder's name)."""
    conv = nn.Conv2d(3, 8, 8, stride=8)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.2)
        conv.bias.zero_()
    trunk = nn.Sequential(conv, nn.ReLU())
    return Encoder("tiny-conv", trunk, trunk, None, Preprocessing(32, (0.5,) * 3, (0.5,) * 3))


def short_search(decoder, pooled, grid, ids, max_len, no_repeat_ngram, **kw) -> list[list[int]]:
    """Greedy, two words at most."""
    greedy = STRATEGIES["greedy"].search
    return greedy(decoder, pooled, grid, ids, max_len=min(max_len, 2), no_repeat_ngram=no_repeat_ngram)


@pytest.fixture
def registered():
    """The three plug-ins registered for one test, then removed from the registries."""
    capkit.register_encoder("tiny-conv", tiny_encoder)
    capkit.register_decoder("mine", GRUDecoder)
    capkit.register_decoding("short", short_search)
    yield
    unregister()


def unregister() -> None:
    ENCODERS.pop("tiny-conv", None)
    DECODERS.pop("mine", None)
    STRATEGIES.pop("short", None)


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def train_run(data: Path, out: Path):
    result = invoke(
        "caption-train", data, "--decoder", "mine", "--encoder", "tiny-conv",
        "--epochs", "2", "--batch-size", "8", "--min-count", "1", "--output", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def sample_captions(captioner, run: Path, cache: Path) -> tuple[list[str], list[str]]:
    """(the captions training wrote for its samples, those `captioner` gives the same features)."""
    samples = json.loads((run / "metrics.json").read_text())["samples"]
    features = extract_features(captioner.encoder, [s["image"] for s in samples], cache, progress=False)
    decoding = Decoding("greedy", max_len=captioner.max_length + 1)  # as training's samples
    again = captioner.caption_features(features["pooled"], features["grid"], decoding)
    return [s["generated"] for s in samples], again


def test_a_registered_decoder_trains_captions_evaluates_and_loads_back(
    tiny_data, tmp_path, monkeypatch, registered
):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CAPKIT_CACHE", str(cache))
    run = train_run(tiny_data, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    assert (config["decoder"], config["encoder"], config["lr"]) == ("mine", "tiny-conv", 3e-3)

    captioner = capkit.load_captioner(run)
    assert isinstance(captioner.decoder, GRUDecoder) and captioner.encoder.grid_size == 4
    trained, loaded = sample_captions(captioner, run, cache)
    assert loaded == trained and all(trained)  # the saved decoder is the trained one

    image = tiny_data / "00.jpg"
    [expected] = capkit.caption_images(captioner, [image])
    result = invoke("caption", image, "--model", run)
    assert result.exit_code == 0 and result.output.strip() == expected.caption

    out = tmp_path / "eval"
    result = invoke("caption-eval", run, tiny_data, "--decoding", "greedy", "--decoding", "short",
                    "--no-meteor", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "comparison.json").read_text())
    assert [(r["model"], r["decoding"]) for r in rows] == [("run", "greedy"), ("run", "short")]
    greedy, short = (json.loads((out / f"run-{d}" / "eval.json").read_text()) for d in ("greedy", "short"))
    for long_one, short_one in zip(greedy["predictions"], short["predictions"], strict=True):
        assert long_one["caption"].split()[:2] == short_one["caption"].split()
    assert (out / "compare.png").is_file()


def test_a_run_loads_through_entry_points_when_nothing_is_registered(
    tiny_data, tmp_path, monkeypatch, registered, plugin_site
):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CAPKIT_CACHE", str(cache))
    run = train_run(tiny_data, tmp_path / "run")
    before = capkit.caption_images(capkit.load_captioner(run), [tiny_data / "00.jpg"])[0].caption
    unregister()  # as in a fresh process that never imported the plug-in's module

    with pytest.raises(UserError) as err:
        capkit.load_captioner(run)
    assert "its decoder 'mine' is not registered" in str(err.value)
    assert "capkit.register_decoder('mine', ...)" in str(err.value) and "'capkit.decoders'" in str(err.value)
    result = invoke("caption", tiny_data / "00.jpg", "--model", run)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1

    install_entry_points(plugin_site, monkeypatch)
    assert "mine" in decoder_names() and "mine" not in DECODERS  # listed without being imported
    captioner = capkit.load_captioner(run)
    assert type(captioner.decoder).__name__ == "GRUDecoder" and "mine" in DECODERS
    assert capkit.caption_images(captioner, [tiny_data / "00.jpg"])[0].caption == before
    trained, loaded = sample_captions(captioner, run, cache)
    assert loaded == trained
    result = invoke("caption", tiny_data / "00.jpg", "--model", run, "--decoding", "short")
    assert result.exit_code == 0 and result.output.split() == before.split()[:2]


@pytest.fixture
def plugin_site(tmp_path):
    """A folder for an installed plug-in distribution; its module is forgotten afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    yield site
    sys.modules.pop(plugin_module(site), None)


def plugin_module(site: Path) -> str:
    return f"capkit_plugin_{abs(hash(str(site)))}"


def install_entry_points(site: Path, monkeypatch) -> None:
    """An installed distribution, as pip leaves one: a module re-exporting this file's plug-ins and
    a dist-info folder declaring them in capkit's three entry-point groups, on `sys.path`."""
    module = plugin_module(site)
    (site / f"{module}.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('{module}_src', {str(Path(__file__))!r})\n"
        "src = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(src)\n"
        "GRUDecoder, tiny_encoder, short_search = src.GRUDecoder, src.tiny_encoder, src.short_search\n"
    )
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[capkit.decoders]\nmine = {module}:GRUDecoder\n\n"
        f"[capkit.encoders]\ntiny-conv = {module}:tiny_encoder\n\n"
        f"[capkit.decodings]\nshort = {module}:short_search\n"
    )
    monkeypatch.syspath_prepend(str(site))


def test_registration_rules(registered):
    with pytest.raises(ValueError, match="decoder 'mine' is already registered; pass replace=True"):
        capkit.register_decoder("mine", GRUDecoder)
    with pytest.raises(ValueError, match="already registered"):
        capkit.register_decoding("greedy", short_search)
    with pytest.raises(ValueError, match="already registered"):
        capkit.register_encoder("efficientnet_lite0", tiny_encoder)
    capkit.register_decoder("mine", GRUDecoder, replace=True)
    for bad in ("", "has space", "name=weights.pth", "-dash-first"):
        with pytest.raises(ValueError, match="use letters, digits"):
            capkit.register_decoder(bad, GRUDecoder)
    with pytest.raises(TypeError, match="not a subclass of capkit.decoders.base.Decoder"):
        capkit.register_decoder("gru", nn.GRU)
    with pytest.raises(TypeError, match="not a function returning"):
        capkit.register_encoder("tiny2", tiny_encoder())
    with pytest.raises(TypeError, match="neither a capkit.decoding.Strategy nor a search function"):
        capkit.register_decoding("nothing", 3)
    assert STRATEGIES["short"].description == "Greedy, two words at most."


def test_the_decoder_flag_accepts_a_decoder_registered_before_parsing(tmp_path, registered):
    assert train_config_from(tmp_path, {"decoder": "mine"}).decoder == "mine"
    unregister()
    with pytest.raises(UserError, match="--decoder: unknown value 'mine'"):
        train_config_from(tmp_path, {"decoder": "mine"})
