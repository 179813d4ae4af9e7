"""`adapt caption-ensemble`: finished runs joined into one run folder that averages their word
probabilities; it loads, captions and evaluates like any run, and bad joins are one-line errors."""

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

import capkit
from adapt.cli import app
from adapt.errors import UserError
from capkit.captioning import Decoding
from capkit.decoders import EnsembleDecoder
from capkit.decoding import STRATEGIES, decode
from capkit.ensemble import make_ensemble
from capkit.features import extract_features
from capkit.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "lstm": {"embed_dim": 16, "hidden_dim": 16},
    "transformer": {"width": 16, "heads": 2, "decoder_layers": 1},
}


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def two_runs(tiny_data, tmp_path):
    """An LSTM and a Transformer run on the same data and vocabulary settings."""
    cache = tmp_path / "cache"
    return [
        train(
            TrainConfig(
                data=str(tiny_data),
                output=str(tmp_path / name),
                cache_dir=str(cache),
                decoder=name,
                decoder_config=cfg,
                epochs=2,
                batch_size=8,
                min_count=1,
            )  # fmt: skip
        )
        for name, cfg in TINY.items()
    ]


def _features(captioner, data, cache):
    feats = extract_features(captioner.encoder, sorted(data.glob("*.jpg")), cache, progress=False)
    return feats["pooled"], feats["grid"]


def test_an_ensemble_averages_its_members_probabilities_and_loads_like_a_run(two_runs, tiny_data, tmp_path):
    out = tmp_path / "ens"
    result = invoke("caption-ensemble", *two_runs, "--output", out)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} >= {
        "decoder.safetensors",
        "word_to_id.json",
        "config.json",
        "README.md",
        "summary.md",
    }
    config = json.loads((out / "config.json").read_text())
    assert config["decoder"] == "ensemble" and config["members_from"] == [str(r) for r in two_runs]

    ensemble, members = capkit.load_captioner(out), [capkit.load_captioner(r) for r in two_runs]
    assert isinstance(ensemble.decoder, EnsembleDecoder) and ensemble.encoder_name == "efficientnet_lite0"
    pooled, grid = _features(ensemble, tiny_data, tmp_path / "cache")
    captions = torch.tensor([[1, 5, 6, 7]]).repeat(len(pooled), 1)
    with torch.no_grad():
        got = ensemble.decoder(pooled, grid, captions).softmax(-1)
        want = torch.stack([m.decoder(pooled, grid, captions).softmax(-1) for m in members]).mean(0)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)  # the mean of the members' probabilities

    [expected] = capkit.caption_images(ensemble, [tiny_data / "00.jpg"])
    result = invoke("caption", tiny_data / "00.jpg", "--model", out)
    assert result.exit_code == 0 and result.output.strip() == expected.caption
    evals = tmp_path / "eval"
    result = invoke(
        "caption-eval", two_runs[0], out, tiny_data, "--decoding", "beam", "--no-meteor", "--out", evals
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((evals / "comparison.json").read_text())
    assert [r["model"] for r in rows] == ["lstm", "ens"]
    assert (
        "ensemble" in (out / "README.md").read_text() and str(two_runs[1]) in (out / "summary.md").read_text()
    )


def test_an_ensemble_of_one_run_twice_captions_as_the_run_does(two_runs, tiny_data, tmp_path):
    run = two_runs[1]
    ensemble = capkit.load_captioner(make_ensemble([run, run], tmp_path / "twice", half=True))
    single = capkit.load_captioner(run)
    pooled, grid = _features(single, tiny_data, tmp_path / "cache")
    for strategy in STRATEGIES:
        kw = dict(max_len=8, beam_size=3)
        assert decode(ensemble.decoder, pooled, grid, single.vocab, strategy, **kw) == decode(
            single.decoder, pooled, grid, single.vocab, strategy, **kw
        ), strategy
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(tmp_path / "twice" / "decoder.safetensors").values()} == {
        torch.float16
    }


def test_bad_joins_are_one_line_errors_and_nothing_is_overwritten(two_runs, tiny_data, tmp_path):
    lstm, transformer = two_runs
    with pytest.raises(UserError, match="at least two RUN"):
        make_ensemble([lstm], tmp_path / "e")
    with pytest.raises(UserError, match="one of the members"):
        make_ensemble([lstm, transformer], lstm)
    other_vocab = train(
        TrainConfig(
            data=str(tiny_data),
            output=str(tmp_path / "mc2"),
            cache_dir=str(tmp_path / "cache"),
            decoder="lstm",
            decoder_config=TINY["lstm"],
            epochs=1,
            batch_size=8,
            min_count=6,
        )  # fmt: skip
    )
    with pytest.raises(UserError, match="mc2: its vocabulary differs"):
        make_ensemble([lstm, other_vocab], tmp_path / "e")
    other_encoder = shutil.copytree(transformer, tmp_path / "b0")
    config = json.loads((other_encoder / "config.json").read_text())
    (other_encoder / "config.json").write_text(json.dumps({**config, "encoder": "efficientnet_b0"}))
    with pytest.raises(UserError, match="b0: its encoder is efficientnet_b0"):
        make_ensemble([lstm, other_encoder], tmp_path / "e")
    assert not (tmp_path / "e").exists()

    out = make_ensemble([lstm, transformer], tmp_path / "e")
    before = (out / "decoder.safetensors").read_bytes()
    result = invoke("caption-ensemble", transformer, lstm, "--output", out)
    assert (
        result.exit_code == 2
        and "--overwrite" in result.output
        and len(result.output.strip().splitlines()) == 1
    )
    assert (out / "decoder.safetensors").read_bytes() == before
    with pytest.raises(UserError, match="is an ensemble already"):
        make_ensemble([out, lstm], tmp_path / "e2")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a capkit run"):
        make_ensemble([lstm, transformer], tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_an_ensemble_is_not_trained(two_runs, tiny_data, tmp_path):
    result = invoke("caption-train", tiny_data, "--decoder", "ensemble", "--output", tmp_path / "x")
    assert result.exit_code == 2 and "choose one of: attention, lstm, transformer" in result.output
    ensemble = make_ensemble(two_runs, tmp_path / "e")
    result = invoke(
        "caption-train", tiny_data, "--init-from", ensemble, "--scst-epochs", "1", "--output", tmp_path / "x"
    )
    assert result.exit_code == 2 and "an ensemble is not trained; train its members" in result.output
    assert not (tmp_path / "x").exists()
    with pytest.raises(UserError, match="train its members"):
        EnsembleDecoder(10, 4)


def test_decoding_from_keeps_the_shipped_default_s_decoding(two_runs, tmp_path):
    source = tmp_path / "with-decoding"
    shutil.copytree(two_runs[0], source)
    (source / "decoding.json").write_text(
        json.dumps({"strategy": "beam", "beam_size": 4, "no_repeat_ngram": 2})
    )
    out = make_ensemble(two_runs, tmp_path / "e", decoding_from=source)
    assert capkit.captioning.preferred_decoding(capkit.load_captioner(out)) == Decoding(
        "beam", beam_size=4, no_repeat_ngram=2
    )
    with pytest.raises(UserError, match="has no decoding.json"):
        make_ensemble(two_runs, tmp_path / "e3", decoding_from=two_runs[1])
