"""`adapt serve` through the official `openai` client: a chat completion, streamed and not, equals
`adapt generate --json` of the same run with the same settings; a caption equals `adapt caption`'s."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

openai = pytest.importorskip("openai")

PROMPT = "سلام، حال شما چطور است؟"


@pytest.fixture(scope="module")
def client(server_url):
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def target(tiny_run):
    from fa_adapt.generation import load_target

    return load_target(str(tiny_run), device="cpu", dtype="fp32")


def generate_json(run, prompt: str, *flags: str) -> dict:
    """What `adapt generate RUN PROMPT --json` prints (fp32 on the CPU, as the test server runs)."""
    from typer.testing import CliRunner

    from adapt.cli import app

    args = ["generate", str(run), prompt, "--json", "--device", "cpu", "--dtype", "fp32", *flags]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_models_lists_the_run_and_the_captioner(client, server_url):
    assert [m.id for m in client.models.list()] == ["tiny-lora", "default"]
    health = httpx.get(f"{server_url}/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny-lora" and health["captioner"] == "default"


def test_chat_completion_equals_adapt_generate(client, tiny_run):
    want = generate_json(tiny_run, PROMPT, "--max-new-tokens", "12")
    got = client.chat.completions.create(
        model="tiny-lora",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=12,
        temperature=0,
        seed=1,
    )
    assert got.choices[0].message.content == want["answer"] and want["answer"]
    assert got.choices[0].finish_reason == ("stop" if want["stopped"] else "length")
    assert got.usage.completion_tokens == want["tokens"]
    assert got.usage.total_tokens == got.usage.prompt_tokens + want["tokens"] and got.usage.prompt_tokens > 10
    assert got.model == "tiny-lora" and got.object == "chat.completion"


def test_streamed_completion_equals_adapt_generate(client, tiny_run):
    want = generate_json(tiny_run, PROMPT, "--max-new-tokens", "12")
    stream = client.chat.completions.create(
        model="tiny-lora",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1  # streamed in pieces, not at the end in one
    assert "".join(pieces).strip() == want["answer"]
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop" if want["stopped"] else "length"]
    assert chunks[-1].usage.completion_tokens == want["tokens"]


def test_system_message_as_adapt_generate(client, target, tiny_run):
    """The run's trained system prompt is used unless the request has its own, as `adapt generate`."""
    from fa_adapt.generation import generate

    assert target.system  # the tiny run was trained with one
    own = "You answer in one word."
    got = client.chat.completions.create(
        model="tiny-lora",
        messages=[{"role": "system", "content": own}, {"role": "user", "content": PROMPT}],
        max_tokens=10,
    )
    want = generate_json(tiny_run, PROMPT, "--max-new-tokens", "10", "--system", own)
    assert got.choices[0].message.content == want["answer"]
    conversation = [
        {"role": "user", "content": "سلام"},
        {"role": "assistant", "content": "سلام!"},
        {"role": "user", "content": PROMPT},
    ]
    got = client.chat.completions.create(model="tiny-lora", messages=conversation, max_tokens=10)
    answer = generate(target, conversation, system=target.system, max_new_tokens=10)
    assert got.choices[0].message.content == answer.answer
    assert (
        answer.answer != generate(target, conversation, max_new_tokens=10).answer
    )  # the system prompt counts


def test_stop_strings_and_max_tokens_per_request(client, target):
    from fa_adapt.generation import generate

    full = generate(target, PROMPT, system=target.system, max_new_tokens=16).answer
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    want = full[: full.find(stop)].strip()
    for stream in (False, True):
        got = client.chat.completions.create(
            model="tiny-lora",
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=16,
            stop=[stop],
            stream=stream,
        )
        if stream:
            chunks = [c for c in got if c.choices]
            text = "".join(c.choices[0].delta.content or "" for c in chunks).strip()
            reason = chunks[-1].choices[0].finish_reason
        else:
            text, reason = got.choices[0].message.content, got.choices[0].finish_reason
        assert (text, reason) == (want, "stop")
        assert stop not in text
    short = client.chat.completions.create(
        model="tiny-lora", messages=[{"role": "user", "content": PROMPT}], max_completion_tokens=3
    )
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3


def test_seeded_sampling_equals_adapt_generate_with_the_seed(client, tiny_run):
    want = generate_json(tiny_run, PROMPT, "--max-new-tokens", "10", "--temperature", "1.5", "--seed", "7")
    got = client.chat.completions.create(
        model="tiny-lora",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=10,
        temperature=1.5,
        seed=7,
    )
    assert got.choices[0].message.content == want["answer"]


def test_caption_equals_adapt_caption(server_url, photo):
    from capkit.captioning import caption_images, load_model

    want = caption_images(load_model(None), [photo])[0].caption
    assert want
    with photo.open("rb") as f:
        upload = httpx.post(
            f"{server_url}/v1/captions", files={"file": (photo.name, f, "image/jpeg")}, timeout=60
        )
    assert upload.status_code == 200, upload.text
    assert upload.json() == {"caption": want, "model": "default"}
    as_json = httpx.post(
        f"{server_url}/v1/captions",
        json={"image": base64.b64encode(photo.read_bytes()).decode(), "model": "default"},
        timeout=60,
    )
    assert as_json.json() == {"caption": want, "model": "default"}
    data_url = "data:image/jpeg;base64," + base64.b64encode(photo.read_bytes()).decode()
    assert (
        httpx.post(f"{server_url}/v1/captions", json={"image": data_url}, timeout=60).json()["caption"]
        == want
    )


def test_page_is_served_at_root(server_url):
    from importlib import resources

    page = resources.files("adapt.serving").joinpath("static", "index.html")
    got = httpx.get(server_url + "/")
    if not page.is_file():
        assert got.status_code == 404 and "error" in got.json()
        return
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/html")
    assert got.text == page.read_text(encoding="utf-8")
