"""`adapt caption` and the caption API on tiny random decoders over the real EfficientNet-Lite0."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from adapt.cli import app
from adapt.runio import write_json
from capkit.captioning import (
    DEFAULT_MODEL_DIR,
    Decoding,
    caption_images,
    expand_images,
    image_tensor,
    load_model,
)
from capkit.decoders import build_decoder
from capkit.vocab import Vocab

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["a", "dog", "runs", "on", "the", "grass", "man", "rides", "bike", "two", "children", "play"]
SMALL = {
    "lstm": {"embed_dim": 16, "hidden_dim": 24},
    "attention": {"embed_dim": 16, "hidden_dim": 24, "attention_dim": 16, "context_dim": 24},
    "transformer": {"width": 32, "heads": 2, "encoder_layers": 1, "decoder_layers": 1},
}


def make_run(folder: Path, decoder: str = "attention", seed: int = 0) -> Path:
    """A run folder as caption-train writes it, with a tiny randomly initialised decoder."""
    torch.manual_seed(seed)
    vocab = Vocab(["<pad>", "<start>", "<end>", "<unk>", *WORDS])
    model = build_decoder(decoder, len(vocab), 1280, pad_id=vocab.pad_id, **SMALL[decoder])
    with torch.no_grad():
        model.out.bias[vocab.end_id] = -20.0  # random weights would often end at once: force full captions
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "decoder.safetensors"))
    vocab.save(folder / "word_to_id.json")
    write_json(
        folder / "config.json",
        {
            "encoder": "efficientnet_lite0",
            "decoder": decoder,
            "max_length": 8,
            "decoder_config": SMALL[decoder],
        },
    )
    return folder


def make_photos(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(n)
    paths = []
    for i in range(n):
        pixels = (torch.rand(48 + 8 * i, 64, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"photo{i}.jpg")
        paths.append(folder / f"photo{i}.jpg")
    return paths


@pytest.fixture(scope="module")
def attention_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "att")


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_caption_one_image_prints_vocabulary_words(attention_run, tmp_path):
    [photo] = make_photos(tmp_path, 1)
    result = invoke("caption", photo, "--model", attention_run)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert set(lines[0].split()) <= set(WORDS)
    assert len(lines[0].split()) == 8  # the model's max_length (its end token is made unlikely)


def test_folders_globs_and_json(attention_run, tmp_path):
    photos = make_photos(tmp_path / "pics", 3)
    result = invoke(
        "caption", tmp_path / "pics", str(tmp_path / "pics" / "photo1.*"), "--model", attention_run, "--json"
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [Path(r["image"]) for r in rows] == [*photos, photos[1]]
    assert rows[1]["caption"] == rows[3]["caption"]  # same image, same caption
    tab = invoke(
        "caption", tmp_path / "pics", "--model", attention_run, "--decoding", "beam", "--beam-size", "2"
    )
    assert tab.exit_code == 0 and len(tab.output.strip().splitlines()) == 3


def test_bad_inputs_are_one_line_errors(attention_run, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    for args, needle in [
        ((bad,), str(bad)),
        ((tmp_path / "missing.jpg",), "missing.jpg: file not found"),
        ((str(tmp_path / "*.png"),), "no file matches"),
        ((bad, "--decoding", "sampling"), "--decoding"),
    ]:
        result = invoke("caption", *args, "--model", attention_run)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and needle in result.output
        assert len(result.output.strip().splitlines()) == 1
    result = invoke("caption", bad, "--model", tmp_path)
    assert result.exit_code == 2 and "not a capkit run folder" in result.output


def test_attention_map_is_drawn_for_attention_and_refused_for_lstm(attention_run, tmp_path):
    [photo] = make_photos(tmp_path, 1)
    out = tmp_path / "att.png"
    result = invoke("caption", photo, "--model", attention_run, "--attention-map", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lstm = make_run(tmp_path / "lstm", "lstm")
    result = invoke("caption", photo, "--model", lstm, "--attention-map", out)
    assert result.exit_code == 2 and "attention" in result.output
    result = invoke("caption", photo, "--model", attention_run, "--attention-map", "/proc/att.png")
    assert result.exit_code == 2 and "error: --attention-map /proc/att.png: cannot write" in result.output
    assert "Traceback" not in result.output


def test_api_decodings_and_preferred_decoding(attention_run, tmp_path):
    photos = make_photos(tmp_path, 2)
    model = load_model(attention_run)
    greedy = caption_images(model, photos, Decoding("greedy"))
    beam1 = caption_images(model, photos, Decoding("beam", beam_size=1))
    assert [r.caption for r in greedy] == [r.caption for r in beam1]
    for r in caption_images(model, photos, Decoding("no-repeat")):
        assert len(r.caption.split()) == len(set(r.caption.split()))
    run = tmp_path / "with-pref"
    shutil.copytree(attention_run, run)
    write_json(run / "decoding.json", {"strategy": "no-repeat", "beam_size": 3})
    preferred = caption_images(load_model(run), photos)
    assert preferred == caption_images(model, photos, Decoding("no-repeat"))


def test_image_tensor_matches_the_encoder_transform(attention_run, tmp_path):
    [photo] = make_photos(tmp_path, 1)
    encoder = load_model(attention_run).encoder
    assert torch.allclose(image_tensor(encoder, photo), encoder.transform(Image.open(photo)), atol=1e-6)


def test_expand_images_rejects_an_empty_folder(tmp_path):
    from adapt.errors import UserError

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        expand_images([tmp_path / "empty"])


@pytest.mark.slow
def test_default_captioner_on_a_real_photo(flickr_sample):
    if not (DEFAULT_MODEL_DIR / "decoder.safetensors").is_file():
        pytest.fail(f"the shipped default captioner is missing from {DEFAULT_MODEL_DIR}")
    photo = sorted((flickr_sample / "Images").glob("*.jpg"))[0]
    # A fresh process, as a user runs it: the time includes imports and model load.
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "adapt", "caption", str(photo)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    seconds = time.perf_counter() - start
    assert out.returncode == 0, out.stderr
    words = out.stdout.split()
    vocab = set(json.loads((DEFAULT_MODEL_DIR / "word_to_id.json").read_text()))
    assert 3 <= len(words) <= 25 and set(words) <= vocab - {"<pad>", "<start>", "<end>", "<unk>"}
    print(f"adapt caption {photo.name}: {out.stdout.strip()!r} in {seconds:.2f} s")
    assert seconds < 15  # ~2 s on an idle 2-core machine; generous for a loaded CI runner


# Each costs from a tenth of a second (sacrebleu) to five seconds (torch._dynamo, which a
# meta-device `normal_` pulls in) on this machine; `adapt caption` needs none of them.
HEAVY = (
    "matplotlib",
    "sacrebleu",
    "pycocoevalcap",
    "accelerate",
    "transformers",
    "torchvision",
    "torch._dynamo",
)


def test_caption_command_imports_nothing_heavy(attention_run, tmp_path):
    [photo] = make_photos(tmp_path, 1)
    script = (
        "import json, sys\n"
        "from adapt.cli import app\n"
        "try:\n"
        f"    app(['caption', {str(photo)!r}, '--model', {str(attention_run)!r}])\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_adapt_process_exits_early_with_all_output_flushed(attention_run, tmp_path):
    # `adapt caption` ends with os._exit (skipping ~0.9 s of interpreter teardown): nothing may be lost.
    photos = make_photos(tmp_path, 3)
    args = ["caption", "--json", "--model", str(attention_run), *map(str, photos)]
    out = subprocess.run([sys.executable, "-m", "adapt", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    in_process = invoke(*args)
    assert json.loads(out.stdout) == json.loads(in_process.output)
    assert [row["image"] for row in json.loads(out.stdout)] == [str(p) for p in photos]
