"""Chat generation for base models, LoRA / freeze runs and prompt-tuned runs alike.

Every prompt is rendered as ChatML with an open assistant turn; generation stops at `<|im_end|>`
(or the tokenizer's own end token). Greedy decoding with a no-repeat-3-gram rule is the default:
the source's models repeated words without it. The rule looks at the answer only: transformers'
`no_repeat_ngram_size` also bans every 3-gram of the prompt, so a model could not repeat a
Persian word of the question (most are several tokens) or the text it is asked to translate.

Prompt tuning is handled here rather than by PEFT's `generate`: PEFT ignores position ids for
prompt-learning models, so in a left-padded batch the padding sits between the virtual tokens
and the prompt and shifts their relative positions, giving other tokens than the same prompt
alone. We build `[padding][virtual tokens][prompt]` ourselves and hand the embeddings to the base
model's `generate`, which then runs with the KV cache and gives the same greedy tokens as PEFT's
own cache-free forward pass (the source could only generate with `use_cache=False`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adapt.errors import UserError
from adapt.runio import check_positive
from adapt.settings import setting
from fa_adapt.chatml import IM_END, Message, render, with_system_message
from fa_adapt.device import to_device
from fa_adapt.streaming import BatchStream, Row, RowStream

DEFAULT_MAX_NEW_TOKENS = 200
DEFAULT_NO_REPEAT_NGRAM = 3


@dataclass
class Answer:
    """One generated answer: `stopped` is True when it ended with an end token before the limit."""

    prompt: str
    answer: str
    stopped: bool
    tokens: int  # generated tokens, the end token included
    seconds: float = 0.0
    token_ids: list[int] = field(default_factory=list, repr=False)
    prompt_tokens: int = 0  # the prompt's tokens (ChatML included)
    finish: str = "stop"  # "stop" (end token or stop string), "length", or "cancelled" (reader gone)

    def to_dict(self) -> dict[str, Any]:
        """The `--json` form: prompt, answer, stopped, tokens."""
        d = asdict(self)
        for internal in ("seconds", "token_ids", "prompt_tokens", "finish"):
            del d[internal]
        return d


def as_messages(prompt: str | Sequence[Message], system: str | None = None) -> list[Message]:
    """A user prompt (str) or a conversation, with an optional system message put first."""
    messages = with_system_message(
        [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt, system
    )
    if not messages or messages[-1]["role"] != "user":
        raise UserError("prompt: the conversation must end with a user message")
    if not str(messages[-1].get("content", "")).strip():
        raise UserError("prompt: empty; give the question or instruction to answer")
    return messages


def prompt_text(tokenizer: Any, messages: Sequence[Message]) -> str:
    """The text the model completes: BOS (as in training) + the ChatML conversation + `assistant` header."""
    return (tokenizer.bos_token or "") + render(messages, add_generation_prompt=True)


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Ids that end an answer: `<|im_end|>` (when the tokenizer has it) and the tokenizer's EOS."""
    ids = []
    if IM_END in tokenizer.get_vocab():
        ids.append(tokenizer.convert_tokens_to_ids(IM_END))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def unpack(target: Any, tokenizer: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) from a loaded run (anything with `.model` and `.tokenizer`) or a model."""
    if hasattr(target, "model") and hasattr(target, "tokenizer") and not hasattr(target, "generate"):
        return target.model, tokenizer or target.tokenizer
    if tokenizer is None:
        raise UserError("generate: a tokenizer is needed when a bare model is given")
    return target, tokenizer


def _is_prompt_learning(model: Any) -> bool:
    cfg = getattr(model, "active_peft_config", None)
    return bool(cfg is not None and getattr(cfg, "is_prompt_learning", False))


MIN_TEMPERATURE = 0.01


@dataclass
class GenerationConfig:
    """How `adapt generate` and `adapt chat` answer (their flags are these fields)."""

    max_new_tokens: int = setting(DEFAULT_MAX_NEW_TOKENS, "Most tokens per answer.", check="positive")
    no_repeat_ngram: int = setting(
        DEFAULT_NO_REPEAT_NGRAM, "Never repeat an n-gram of the answer (0 = off).", check="non_negative"
    )
    temperature: float = setting(0.0, "0 = greedy; above 0 samples.", check="non_negative")
    top_p: float = setting(1.0, "Nucleus sampling mass (with --temperature > 0).")

    def __post_init__(self) -> None:
        check_generation_flags(self.max_new_tokens, self.no_repeat_ngram, self.temperature, self.top_p)


def check_generation_flags(
    max_new_tokens: int, no_repeat_ngram: int = 0, temperature: float = 0.0, top_p: float = 1.0
) -> None:
    """Raise a `UserError` naming the flag for an impossible generation setting (before any model loads)."""
    check_positive("--max-new-tokens", max_new_tokens)
    check_positive("--no-repeat-ngram", no_repeat_ngram, allow_zero=True)
    check_positive("--temperature", temperature, allow_zero=True)
    if 0 < temperature < MIN_TEMPERATURE:  # logits / 1e-300 overflow to inf: sampling breaks
        raise UserError(f"--temperature: 0 for greedy or at least {MIN_TEMPERATURE}, got {temperature}")
    if not 0 < top_p <= 1:
        raise UserError(f"--top-p: must be in (0, 1], got {top_p}")


def _sampling_kwargs(
    tokenizer: Any, max_new_tokens: int, no_repeat_ngram: int, temperature: float, top_p: float
) -> dict[str, Any]:
    check_generation_flags(max_new_tokens, no_repeat_ngram, temperature, top_p)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kw: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "eos_token_id": stop_token_ids(tokenizer),
        "pad_token_id": pad,
        "use_cache": True,
    }
    if temperature > 0:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=None)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kw


def model_device(model: Any) -> Any:
    """The device a (possibly PEFT-wrapped) model's weights are on."""
    return next(model.parameters()).device


def _encode_left_padded(tokenizer: Any, texts: list[str]) -> dict[str, Any]:
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side


def _prompt_tuning_inputs(model: Any, enc: dict[str, Any], pad_id: int) -> dict[str, Any]:
    """`[padding][virtual tokens][prompt]` as input ids + embeddings for the base model's generate.

    The ids at the virtual positions are pad ids: they are never embedded (the embeddings are
    given) and only keep `input_ids` aligned for the no-repeat-n-gram rule.
    """
    import torch

    ids, mask = enc["input_ids"], enc["attention_mask"]
    n_virtual = model.active_peft_config.num_virtual_tokens
    with torch.no_grad():
        words = model.word_embeddings(ids)
        virtual = model.get_prompt(batch_size=ids.shape[0]).to(words.dtype)
    rows_ids, rows_emb, rows_mask = [], [], []
    for i in range(ids.shape[0]):
        n_pad = int((mask[i] == 0).sum())
        rows_emb.append(torch.cat([words[i, :n_pad], virtual[i], words[i, n_pad:]]))
        rows_ids.append(torch.cat([ids[i, :n_pad], ids.new_full((n_virtual,), pad_id), ids[i, n_pad:]]))
        rows_mask.append(torch.cat([mask[i, :n_pad], mask.new_ones(n_virtual), mask[i, n_pad:]]))
    return {
        "input_ids": torch.stack(rows_ids),
        "inputs_embeds": torch.stack(rows_emb),
        "attention_mask": torch.stack(rows_mask),
    }


class AnswerNoRepeatNGram:
    """Logits processor: never produce an n-gram the answer (tokens after `prompt_len`) already has."""

    def __init__(self, n: int, prompt_len: int) -> None:
        self.n, self.prompt_len = n, prompt_len

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        n = self.n
        for row, ids in enumerate(input_ids[:, self.prompt_len :].tolist()):
            if len(ids) < n:
                continue
            prefix = tuple(ids[len(ids) - n + 1 :])
            banned = {ids[i + n - 1] for i in range(len(ids) - n + 1) if tuple(ids[i : i + n - 1]) == prefix}
            if banned:
                scores[row, list(banned)] = -float("inf")
        return scores


def generate_batch(
    target: Any,
    prompts: Sequence[str | Sequence[Message]],
    tokenizer: Any = None,
    system: str | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    no_repeat_ngram: int = DEFAULT_NO_REPEAT_NGRAM,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    stream: Callable[[str], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    rows: Sequence[Row] | None = None,
) -> list[Answer]:
    """Answer many prompts, `batch_size` at a time with left padding; greedy unless `temperature > 0`.

    `target` is a loaded run or a model (then pass `tokenizer`). `stream` (single prompt only)
    receives the answer text piece by piece as it is generated. `rows` (one per prompt) give
    each prompt its own `max_new_tokens`, stop strings, stream and cancellation
    (`fa_adapt.streaming.Row`). `on_batch(n)` is called after each batch with the number of
    prompts it held (for progress bars).
    """
    model, tokenizer = unpack(target, tokenizer)
    check_positive("--batch-size", batch_size)
    if stream is not None and len(prompts) != 1:
        raise UserError("generate: streaming works on one prompt at a time")
    if rows is None:
        rows = [Row(emit=stream) for _ in prompts]
    if len(rows) != len(prompts):
        raise UserError(f"generate: {len(rows)} rows given for {len(prompts)} prompts")
    for row in rows:
        check_positive("max_new_tokens", row.max_new_tokens)
    kw = _sampling_kwargs(tokenizer, max_new_tokens, no_repeat_ngram, temperature, top_p)
    model.eval()
    answers: list[Answer] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [as_messages(p, system) for p in prompts[start : start + batch_size]]
        answers += _generate_chunk(
            model, tokenizer, chunk, rows[start : start + batch_size], kw, no_repeat_ngram
        )
        if on_batch is not None:
            on_batch(len(chunk))
    return answers


def _generate_chunk(
    model: Any,
    tokenizer: Any,
    chunk: list[list[Message]],
    rows: Sequence[Row],
    kw: dict[str, Any],
    no_repeat_ngram: int,
) -> list[Answer]:
    """One left-padded batch through `generate`, each row read and stopped by its `RowStream`."""
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    prompt_tuned = _is_prompt_learning(model)
    runner = model.get_base_model() if prompt_tuned else model
    enc = _encode_left_padded(tokenizer, [prompt_text(tokenizer, m) for m in chunk])
    enc = to_device(dict(enc), model_device(model))  # the model may be on a GPU
    prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
    inputs = _prompt_tuning_inputs(model, enc, kw["pad_token_id"]) if prompt_tuned else dict(enc)
    streams = [
        RowStream(tokenizer, set(kw["eos_token_id"]), r.max_new_tokens or kw["max_new_tokens"], r.stop,
                  r.emit, r.cancelled, r.on_finish, int(n))
        for r, n in zip(rows, prompt_tokens, strict=True)
    ]  # fmt: skip
    batch = BatchStream(streams)
    prompt_len = inputs["input_ids"].shape[1]
    rules = LogitsProcessorList([AnswerNoRepeatNGram(no_repeat_ngram, prompt_len)] if no_repeat_ngram else [])
    t0 = time.perf_counter()
    with torch.no_grad():
        runner.generate(
            **inputs, **{**kw, "max_new_tokens": max(s.max_new_tokens for s in streams)},
            logits_processor=rules, stopping_criteria=StoppingCriteriaList([batch]), streamer=batch,
        )  # fmt: skip
    seconds = (time.perf_counter() - t0) / len(chunk)
    return [answer_of(s, m[-1]["content"], seconds) for m, s in zip(chunk, streams, strict=True)]


def answer_of(row: RowStream, prompt: str, seconds: float | None = None) -> Answer:
    """The `Answer` a finished row gives (`seconds`: default the row's own time)."""
    return Answer(
        prompt=prompt,
        answer=row.text.strip(),
        stopped=row.finish == "stop",
        tokens=row.tokens,
        seconds=row.seconds if seconds is None else seconds,
        token_ids=row.ids + ([row.end_id] if row.end_id is not None else []),
        prompt_tokens=row.prompt_tokens,
        finish=row.finish or "length",
    )


def generate(
    target: Any,
    prompt: str | Sequence[Message],
    tokenizer: Any = None,
    system: str | None = None,
    stream: Callable[[str], None] | None = None,
    **settings: Any,
) -> Answer:
    """Answer one prompt (a user message, or a conversation ending with a user message).

    `target` is a loaded run (`fa_adapt.load_run`) or a model (then pass its `tokenizer`, with
    the ChatML tokens added). `settings` are `GenerationConfig`'s (max_new_tokens,
    no_repeat_ngram, temperature, top_p). Greedy by default; stops at `<|im_end|>`.
    """
    return generate_batch(target, [prompt], tokenizer=tokenizer, system=system, stream=stream, **settings)[0]


BASE = "base"


@dataclass
class Target:
    """A model ready to answer: what the CLI loads from `RUN` (a run folder, or `base`)."""

    label: str
    model: Any
    tokenizer: Any
    run: Any = None  # the loaded `fa_adapt.runs.Run`, when it came from a run folder
    system: str | None = None  # the run's `--system-prompt`: its answers use it unless told otherwise


def load_base(
    model_name: str | None = None, quantization: str = "nf4", device: str = "auto", dtype: str = "auto"
) -> Target:
    """A base model (None = the embedded Gemma 3 270M) with the ChatML tokens added (untrained rows)."""
    from fa_adapt.chatml import add_chatml_tokens
    from fa_adapt.loading import load_model, load_tokenizer

    model = load_model(model_name, quantization=quantization, for_training=False, device=device, dtype=dtype)
    tokenizer = load_tokenizer(model_name)
    add_chatml_tokens(tokenizer, model)
    model.eval()
    model.config.use_cache = True
    return Target(BASE, model, tokenizer)


def load_target(spec: str, base: bool = False, device: str = "auto", dtype: str = "auto") -> Target:
    """`spec` is a run folder or `base` (the default base model); `base=True` gives the run's base
    model. `device` and `dtype` (`--dtype`): see `fa_adapt.device`."""
    from fa_adapt.runs import load_run

    if spec == BASE:
        return load_base(device=device, dtype=dtype)
    if (Path(spec) / EXPORT_MARKER).is_file():  # a merged model from `adapt export`: plain transformers
        from fa_adapt.loading import load_model, load_tokenizer

        model = load_model(spec, quantization="none", for_training=False, device=device, dtype=dtype).eval()
        return Target(f"merged ({Path(spec).name})", model, load_tokenizer(spec))
    if base:
        from fa_adapt.runs import read_run_config

        cfg = read_run_config(Path(spec))
        return load_base(cfg.get("model"), cfg.get("quantization", "nf4"), device=device, dtype=dtype)
    run = load_run(spec, device=device, dtype=dtype)
    system = run.config.get("system_prompt")
    return Target(f"{run.method} ({Path(spec).name})", run.model, run.tokenizer, run, system)


EXPORT_MARKER = "adapt_export.json"  # written by fa_adapt.export into a merged-model folder
