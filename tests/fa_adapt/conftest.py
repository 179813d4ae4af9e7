"""Fixtures: a tiny random Gemma 3 (2 layers, hidden 64) and a byte-level BPE tokenizer built here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TEXT = [
    "سلام، حال شما چطور است؟ من خوبم، ممنون.",
    "یک داستان کوتاه بگو. روزی روزگاری پادشاهی بود.",
    "Hello, how are you? I am fine, thank you.",
    "system user assistant you are a helpful assistant",
    "تهران پایتخت ایران است. رشت شهری بارانی است.",
]

CONVERSATIONS = [
    {
        "message": [
            {"role": "system", "content": "تو یک دستیار مفید هستی."},
            {"role": "user", "content": f"سوال شماره {i}: پایتخت ایران کجاست؟"},
            {"role": "assistant", "content": f"پاسخ {i}: تهران پایتخت ایران است."},
        ]
    }
    for i in range(24)
]


def build_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXT * 3, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    fast.save_pretrained(folder)
    return fast


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    folder = tmp_path_factory.mktemp("tiny-gemma3")
    tok = build_tokenizer(folder)
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        sliding_window=64,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    Gemma3ForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture()
def chat_jsonl(tmp_path) -> Path:
    path = tmp_path / "chat.jsonl"
    path.write_text(
        "\n".join(json.dumps(c, ensure_ascii=False) for c in CONVERSATIONS) + "\n", encoding="utf-8"
    )
    return path
