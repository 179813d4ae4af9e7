"""ChatML rendering and the ChatML special tokens.

Conversations are rendered as `<|im_start|>role\\ncontent<|im_end|>\\n`. Gemma's tokenizer has no
such tokens, so they are added as real special tokens (one id each, never split) and their new
embedding rows start from the embedding of the text they stand for: a random row would make the
model's first predictions after them noise, and `<|im_end|>` is what teaches it to stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHATML_TOKENS = (IM_START, IM_END)
ROLES = ("system", "user", "assistant")

Message = dict[str, str]


def render_turn(role: str, content: str) -> str:
    """One ChatML turn, newline-terminated."""
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def generation_prompt() -> str:
    """The text that opens an assistant turn for the model to complete."""
    return f"{IM_START}assistant\n"


def with_system_message(messages: Sequence[Message], system: str | None) -> list[Message]:
    """A copy of `messages` with a `system` message first, unless there is none or it has its own."""
    copied = [dict(m) for m in messages]
    if system and not (copied and copied[0]["role"] == "system"):
        copied.insert(0, {"role": "system", "content": system})
    return copied


def with_system(conversations: Sequence[Sequence[Message]], system: str | None) -> list[list[Message]]:
    """`with_system_message` of every conversation.

    Training with `adapt finetune --system-prompt` and evaluating that run both go through here, so
    the run is scored in the format it was trained on."""
    return [with_system_message(c, system) for c in conversations]


def render(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """Render a conversation (list of `{role, content}`) as ChatML text."""
    text = "".join(render_turn(m["role"], m["content"]) for m in messages)
    return text + generation_prompt() if add_generation_prompt else text


def add_chatml_tokens(tokenizer: Any, model: Any | None = None) -> list[int]:
    """Make `<|im_start|>`/`<|im_end|>` special tokens of `tokenizer` (and rows of `model`'s embeddings).

    Returns the ids of the tokens that were newly added (empty when the tokenizer already had
    both, e.g. a ChatML-trained model, which is then left as it is). New embedding rows are set
    to the mean embedding of the pieces the literal text tokenizes to, computed before resizing.
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in CHATML_TOKENS if t not in vocab]
    if not missing:
        return []
    pieces = {t: tokenizer(t, add_special_tokens=False)["input_ids"] for t in missing}
    tokenizer.add_special_tokens(
        {"additional_special_tokens": missing}, replace_extra_special_tokens=False
    ) if _accepts_replace_flag(tokenizer) else tokenizer.add_special_tokens(
        {"additional_special_tokens": missing}
    )
    new_ids = tokenizer.convert_tokens_to_ids(missing)
    if model is not None:
        import torch

        emb = model.get_input_embeddings()
        old = emb.weight.detach()
        init = {t: old[ids].float().mean(0) for t, ids in pieces.items()}
        # pad_to_multiple_of keeps matmuls aligned; extra rows beyond len(tokenizer) are never produced
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        emb = model.get_input_embeddings()
        with torch.no_grad():
            for tok, tok_id in zip(missing, new_ids, strict=True):
                emb.weight[tok_id] = init[tok].to(emb.weight.dtype)
            out = model.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != emb.weight.data_ptr():
                for tok, tok_id in zip(missing, new_ids, strict=True):
                    out.weight[tok_id] = init[tok].to(out.weight.dtype)
    return list(new_ids)


def _accepts_replace_flag(tokenizer: Any) -> bool:
    import inspect

    return "replace_extra_special_tokens" in inspect.signature(tokenizer.add_special_tokens).parameters
