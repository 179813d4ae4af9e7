"""Tiny real chat models for fast tests: a byte-level BPE tokenizer trained here and a 2-layer Gemma3.

Loaded by the generation / evaluation / compare tests from its file path: pytest runs with
`--import-mode=importlib`, so test files cannot import a sibling module by name.
"""

from __future__ import annotations

import copy

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

from fa_adapt.chatml import add_chatml_tokens, render

CORPUS = [
    "سلام، حال شما چطور است؟ من خوبم، ممنون.",
    "یک داستان کوتاه بگو. روزی روزگاری پسری در رشت زندگی می‌کرد.",
    "ملکه الیزابت کیست؟ او ملکه بریتانیا بود.",
    "Hello world, this is a short English sentence.",
    "یک شعر فارسی بنویسید: باران می‌بارد و دل من شاد است.",
]


def tokenizer():
    """A ~350-token byte-level BPE tokenizer with pad/eos/bos and the ChatML tokens."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )


def model_and_tokenizer(seed: int = 0, scale: float = 3.0):
    """A 2-layer random Gemma3 (weights scaled up so greedy output varies) with ChatML tokens added."""
    tok = tokenizer()
    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        # wider than any test sequence: HF's sliding window counts padding, which would make a
        # left-padded batch see less context than the same prompt alone
        sliding_window=512,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    model = Gemma3ForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    add_chatml_tokens(tok, model)
    return model.eval(), tok


def lora(model, seed: int = 1):
    """A LoRA-wrapped copy with non-zero adapter weights (so it differs from the base)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(copy.deepcopy(model), cfg).eval()


def prompt_tuned(model, seed: int = 2, virtual: int = 5):
    """A prompt-tuning copy with random (non-trivial) virtual token embeddings."""
    from peft import PromptTuningConfig, get_peft_model

    pm = get_peft_model(
        copy.deepcopy(model), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=virtual)
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        pm.prompt_encoder.default.embedding.weight.normal_(0, 5.0)
    return pm.eval()


def freeze_like(model, seed: int = 3):
    """A plain copy with its first and last decoder layer changed, like a freeze run."""
    m = copy.deepcopy(model)
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in (m.model.layers[0], m.model.layers[-1]):
            for p in layer.parameters():
                p.add_(torch.randn_like(p) * 0.5)
    return m.eval()


def overfit(model, tok, conversation, steps: int = 60, lr: float = 3e-3):
    """Train `model` on one conversation (loss on the assistant turn) until it can repeat it; returns losses."""
    prompt = tok.bos_token + render(conversation[:-1], add_generation_prompt=True)
    full = prompt + conversation[-1]["content"] + "<|im_end|>\n"
    p_len = len(tok(prompt, add_special_tokens=False)["input_ids"])
    ids = tok(full, add_special_tokens=False, return_tensors="pt")["input_ids"]
    labels = ids.clone()
    labels[:, :p_len] = -100
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses
