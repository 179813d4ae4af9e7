"""Fixtures: the real `adapt serve` app under uvicorn on a free loopback port.

It serves a tiny LoRA run (trained here for 2 steps with a system prompt, from a 2-layer random
Gemma 3 and the byte-level tokenizer of tests/fa_adapt/tiny_chat.py) in fp32, and the captioner
shipped with capkit. `server_url` is one such server for the session; `start_server(**settings)`
starts another with other `ServeConfig` settings (a context manager yielding its URL).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="adapt serve needs the serve extra: pip install -e '.[serve]'")

TESTS = Path(__file__).resolve().parents[1]
SYSTEM = "تو یک دستیار مفید هستی."
CHATS = [
    [{"role": "user", "content": f"سوال {i}: پایتخت ایران کجاست؟"},
     {"role": "assistant", "content": f"پاسخ {i}: تهران پایتخت ایران است."}]
    for i in range(8)
]  # fmt: skip


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sample_photo() -> Path | None:
    """A real photo of the Flickr8k sample in shared/, or None where it is absent."""
    capkit_conftest = _module("serve_capkit_conftest", TESTS / "capkit" / "conftest.py")
    folder = capkit_conftest.sample_dir()
    photos = sorted(folder.glob("**/*.jpg")) if folder.is_dir() else []
    return photos[0] if photos else None


@pytest.fixture(scope="session")
def photo() -> Path:
    found = sample_photo()
    if found is None:
        pytest.skip("no Flickr8k sample photo in shared/data/flickr8k_sample (set ADAPT_SHARED_DATA)")
    return found


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A 2-step LoRA run with a system prompt, on a tiny random Gemma 3 (no quantization)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from fa_adapt import finetune

    tiny = _module("serve_tiny_chat", TESTS / "fa_adapt" / "tiny_chat.py")
    base, tok = tmp_path_factory.mktemp("tiny-base"), tiny.tokenizer()
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=4096,
        sliding_window=4096,  # HF's window counts left padding: keep batched == single exactly
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
    )  # fmt: skip
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():  # scaled up so that greedy answers vary from prompt to prompt
        for p in model.parameters():
            p.mul_(3.0)
    model.save_pretrained(base)
    tok.save_pretrained(base)
    data = base / "chat.jsonl"
    data.write_text(
        "".join(json.dumps({"message": c}, ensure_ascii=False) + "\n" for c in CHATS), encoding="utf-8"
    )
    return Path(
        finetune(
            method="lora", model=str(base), data=str(data), output=str(tmp_path_factory.mktemp("run") / "tiny-lora"),
            quantization="none", max_steps=2, batch_size=4, lr=1e-2, system_prompt=SYSTEM,
        )
    )  # fmt: skip


@contextlib.contextmanager
def running_server(run: Path, **settings) -> Iterator[str]:
    """The real app (`adapt.serving.create_app`) under uvicorn in a thread; yields its base URL."""
    import httpx
    import uvicorn

    from adapt.serving import ServeConfig, create_app

    config = ServeConfig(run=str(run), port=0, **{"dtype": "fp32", "device": "cpu", **settings})
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="session")
def server_url(tiny_run) -> Iterator[str]:
    """A server with the default settings (batching on: --max-batch 8, --batch-wait-ms 5)."""
    with running_server(tiny_run) as url:
        yield url


@pytest.fixture(scope="session")
def start_server(tiny_run):
    """`with start_server(max_batch=1, max_queue=2) as url:` another server on the tiny run."""
    return lambda **settings: running_server(tiny_run, **settings)
