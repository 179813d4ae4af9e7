"""Property tests (hypothesis) for ChatML rendering, row normalisation, label masking, truncation, collation.

The checks are independent of how `encode_conversation` builds its labels: turns are located by
counting `<|im_start|>` ids, trained tokens are grouped into contiguous runs and decoded, and the
result is compared with the conversation itself.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fa_adapt import data as D
from fa_adapt.chatml import IM_END, IM_START, ROLES, add_chatml_tokens, render

_spec = importlib.util.spec_from_file_location("fa_tiny_chat", Path(__file__).with_name("tiny_chat.py"))
tiny_chat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_chat)

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TURN = re.compile(r"<\|im_start\|>(system|user|assistant)\n(.*?)<\|im_end\|>\n", re.DOTALL)

# Persian, ASCII, digits, punctuation and markup-like characters, whitespace and newlines, an emoji
CHARS = st.sampled_from(list("سلامپایتخترانیکشعرفارسی ،؟abcXYZ019 .,!?<>|_-\n\t\"'{}[]") + ["😀", "é"])
CONTENT = st.text(CHARS, min_size=1, max_size=30).filter(
    lambda s: s.strip() and IM_START not in s and IM_END not in s
)


@st.composite
def conversations(draw, min_turns: int = 1, max_turns: int = 6) -> list[dict[str, str]]:
    """A conversation of random roles and contents with at least one assistant turn."""
    roles = draw(st.lists(st.sampled_from(ROLES), min_size=min_turns, max_size=max_turns))
    if "assistant" not in roles:
        roles[draw(st.integers(0, len(roles) - 1))] = "assistant"
    return [{"role": r, "content": draw(CONTENT)} for r in roles]


def parse(text: str) -> list[dict[str, str]]:
    """Inverse of `render` for contents without ChatML markers; fails if `text` is not all turns."""
    turns = list(TURN.finditer(text))
    assert "".join(m.group(0) for m in turns) == text, text
    return [{"role": m.group(1), "content": m.group(2)} for m in turns]


@functools.cache
def tokenizer():
    tok = tiny_chat.tokenizer()
    add_chatml_tokens(tok)
    return tok


def trained_runs(ids: list[int], labels: list[int]) -> list[tuple[int, int]]:
    """(start, end) of every maximal run of positions that carry a label."""
    runs, start = [], None
    for i, lab in enumerate([*labels, D.IGNORE_INDEX]):
        if lab != D.IGNORE_INDEX and start is None:
            start = i
        elif lab == D.IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs


def answer_positions(ids: list[int], messages: list[dict[str, str]]) -> set[int]:
    """Positions of assistant content and its `<|im_end|>`, found from the tokens alone: the k-th
    `<|im_start|>` opens turn k, its header is the shortest prefix decoding to `<|im_start|>role\\n`."""
    tok = tokenizer()
    start_id, end_id = tok.convert_tokens_to_ids([IM_START, IM_END])
    starts = [p for p, t in enumerate(ids) if t == start_id]
    found: set[int] = set()
    for k, s in enumerate(starts):
        if messages[k]["role"] != "assistant":
            continue
        header = f"{IM_START}assistant\n"
        h = next((j for j in range(1, len(ids) - s + 1) if tok.decode(ids[s : s + j]) == header), None)
        if h is None:
            continue  # cut inside the header
        end = next((p for p in range(s + h, len(ids)) if ids[p] == end_id), len(ids) - 1)
        found.update(range(s + h, end + 1))
    return found


@PROPERTY
@given(conversations(), st.booleans())
def test_render_parses_back(messages, generation_prompt):
    text = render(messages, add_generation_prompt=generation_prompt)
    if generation_prompt:
        assert text.endswith(f"{IM_START}assistant\n")
        text = text[: -len(f"{IM_START}assistant\n")]
    assert parse(text) == messages


@PROPERTY
@given(conversations(), st.data())
def test_normalised_rows_render_and_parse_back(messages, data):
    """Any spelling of the roles (OpenAI or ShareGPT, any case) and padded contents normalise the same way."""
    alias = {"system": ["system", "SYSTEM"], "user": ["user", "human", "Human"], "assistant": ["assistant", "gpt", "model", "bot"]}  # fmt: skip
    sharegpt = data.draw(st.booleans())
    turns = [
        {"from": data.draw(st.sampled_from(alias[m["role"]])), "value": f"  {m['content']}\n"}
        if sharegpt
        else {"role": data.draw(st.sampled_from(alias[m["role"]])), "content": m["content"]}
        for m in messages
    ]
    normalised = D.normalize_row({"conversations" if sharegpt else "messages": turns})
    expected = [{"role": m["role"], "content": m["content"].strip()} for m in messages]
    assert normalised == expected
    assert parse(render(normalised)) == expected


@PROPERTY
@given(conversations(), st.sampled_from([IM_START, IM_END]), st.integers(0, 5))
def test_content_holding_a_chatml_marker_is_a_bad_row(messages, marker, where):
    i = where % len(messages)
    messages[i] = {**messages[i], "content": messages[i]["content"] + marker + "x"}
    try:
        D.normalize_row({"messages": messages})
    except D.BadRow as err:
        assert err.kind == "ChatML marker in content" and f"messages[{i}].content" in str(err)
    else:
        raise AssertionError("a ChatML marker inside a content was accepted")


@PROPERTY
@given(conversations())
def test_tokens_are_the_rendering_and_only_assistant_content_plus_end_is_trained(messages):
    tok = tokenizer()
    ids, labels = D.encode_conversation(tok, messages)
    assert len(ids) == len(labels)
    assert tok.decode(ids, clean_up_tokenization_spaces=False) == tok.bos_token + render(messages)
    # a label is the token at its own position (the model shifts), or -100
    assert all(lab in (D.IGNORE_INDEX, i) for lab, i in zip(labels, ids, strict=True))
    runs = trained_runs(ids, labels)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    # one run per assistant turn, decoding to exactly its content followed by <|im_end|>
    assert [tok.decode(ids[a:b], clean_up_tokenization_spaces=False) for a, b in runs] == [
        c + IM_END for c in answers
    ]
    # trained positions are exactly the assistant contents and their end markers; all others are -100
    assert {p for a, b in runs for p in range(a, b)} == answer_positions(ids, messages)


@PROPERTY
@given(st.lists(conversations(max_turns=4), min_size=1, max_size=4), st.integers(1, 80))
def test_truncation_never_trains_on_a_non_assistant_token(convs, max_length):
    tok = tokenizer()
    stats = D.DataStats()
    try:
        rows = D.tokenize_conversations(tok, convs, max_length, stats)
    except D.UserError as err:  # every conversation lost all its answer tokens
        assert "--max-length" in str(err) and stats.skipped_too_long == len(convs)
        return
    assert len(rows) + stats.skipped_too_long == len(convs)
    kept = iter(rows)
    for messages in convs:
        full_ids, full_labels = D.encode_conversation(tok, messages)
        first_label = next(i for i, lab in enumerate(full_labels) if lab != D.IGNORE_INDEX)
        if first_label >= max_length:
            continue  # dropped: nothing of the answer would survive
        row = next(kept)
        n = len(row["input_ids"])
        assert n == min(len(full_ids), max_length)
        assert (
            row["input_ids"] == full_ids[:n] and row["labels"] == full_labels[:n]
        )  # a prefix, never shifted
        trained = [p for p, lab in enumerate(row["labels"]) if lab != D.IGNORE_INDEX]
        assert trained, "a kept row must teach something"
        assert set(trained) <= answer_positions(row["input_ids"], messages)
    assert next(kept, None) is None


@PROPERTY
@given(st.lists(conversations(max_turns=3), min_size=1, max_size=5), st.sampled_from([None, 8]))
def test_collator_pads_with_untrained_positions_only(convs, multiple):
    from fa_adapt.collator import ChatCollator

    tok = tokenizer()
    rows = [dict(zip(("input_ids", "labels"), D.encode_conversation(tok, m), strict=True)) for m in convs]
    batch = ChatCollator(tok.pad_token_id, pad_to_multiple_of=multiple)(rows)
    width = batch["input_ids"].shape[1]
    assert width == max(len(r["input_ids"]) for r in rows) or (multiple and width % multiple == 0)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == r["input_ids"]
        assert batch["labels"][i, :n].tolist() == r["labels"]
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
        assert set(batch["labels"][i, n:].tolist()) <= {D.IGNORE_INDEX}
