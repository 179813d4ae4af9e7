"""Chat data: both schemas, every file form, bad rows, ChatML rendering and exact label masking."""

from __future__ import annotations

import json

import pytest

from adapt.errors import UserError
from fa_adapt import data as D
from fa_adapt.chatml import IM_END, IM_START, add_chatml_tokens, render

SHAREGPT = {
    "conversations": [
        {"from": "system", "value": "sys"},
        {"from": "human", "value": "hi"},
        {"from": "gpt", "value": "hello"},
    ]
}
OPENAI = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def test_both_schemas_normalise_to_roles():
    assert D.normalize_row(SHAREGPT) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    assert D.normalize_row(OPENAI)[1] == {"role": "assistant", "content": "hello"}


def test_file_forms(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [SHAREGPT, OPENAI]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pq.write_table(pa.table({"message": [OPENAI["messages"], OPENAI["messages"]]}), tmp_path / "a.parquet")
    (tmp_path / "a.csv").write_text(
        'message\n"' + json.dumps(OPENAI["messages"]).replace('"', '""') + '"\n', encoding="utf-8"
    )
    for name, n in [("a.json", 2), ("a.jsonl", 2), ("a.parquet", 2), ("a.csv", 1)]:
        convs, stats = D.load_conversations(tmp_path / name)
        assert len(convs) == n and stats.bad_rows == 0, name
        assert convs[-1][-1] == {"role": "assistant", "content": "hello"}


BAD_ROWS = [
    ("{not json", "malformed JSON"),
    (json.dumps({"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]}), "role: missing"),
    (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}), "unknown role"),
    (
        json.dumps({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "y"}]}),
        "empty",
    ),
    (json.dumps({"messages": [{"role": "user", "content": "only a question"}]}), "no assistant turn"),
    (json.dumps({"text": "hello"}), "found text"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_ROWS)
def test_bad_rows_skipped_and_counted_or_strict_error(tmp_path, line, reason):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(OPENAI) + "\n" + line + "\n", encoding="utf-8")
    convs, stats = D.load_conversations(path)
    assert len(convs) == 1 and stats.bad_rows == 1 and stats.rows == 2
    with pytest.raises(UserError, match=rf"d.jsonl: row 2: .*{reason}"):
        D.load_conversations(path, strict=True)


def test_file_level_errors(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        D.load_conversations(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"x": 1}\n')
    with pytest.raises(UserError, match="no usable conversation"):
        D.load_conversations(tmp_path / "bad.jsonl")
    (tmp_path / "latin.jsonl").write_bytes(b'{"messages": "\xe9\xff"}\n')
    with pytest.raises(UserError, match="UTF-8"):
        D.load_conversations(tmp_path / "latin.jsonl")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["a"], "answer": ["b"]}), tmp_path / "cols.parquet")
    with pytest.raises(UserError, match="found prompt, answer"):
        D.load_conversations(tmp_path / "cols.parquet")


def _tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert add_chatml_tokens(tok)  # adds both
    return tok


def test_chatml_tokens_are_single_special_ids(tiny_model_dir):
    tok = _tokenizer(tiny_model_dir)
    text = render(OPENAI["messages"])
    ids = tok(text, add_special_tokens=False)["input_ids"]
    start, end = tok.convert_tokens_to_ids([IM_START, IM_END])
    assert ids.count(start) == 2 and ids.count(end) == 2
    assert add_chatml_tokens(tok) == []  # already there: left as it is


def test_labels_exactly_cover_assistant_content_and_end(tiny_model_dir):
    tok = _tokenizer(tiny_model_dir)
    messages = D.normalize_row(SHAREGPT)
    ids, labels = D.encode_conversation(tok, messages)
    # the concatenated pieces decode to the ChatML rendering
    assert tok.decode(ids, skip_special_tokens=False) == "<bos>" + render(messages)
    labelled = [i for i, lab in enumerate(labels) if lab != D.IGNORE_INDEX]
    assert tok.decode([ids[i] for i in labelled]) == "hello" + IM_END
    # positions: contiguous, ending at the final <|im_end|> (before the trailing newline)
    assert labelled == list(range(labelled[0], labelled[-1] + 1))
    assert ids[labelled[-1]] == tok.convert_tokens_to_ids(IM_END)
    assert all(labels[i] == ids[i] for i in labelled)


def test_length_policy_truncates_or_skips(tiny_model_dir):
    tok = _tokenizer(tiny_model_dir)
    long_answer = {"role": "assistant", "content": "سلام " * 200}
    convs = [
        [{"role": "user", "content": "hi"}, long_answer],
        [{"role": "user", "content": "سلام " * 200}, {"role": "assistant", "content": "x"}],
        D.normalize_row(OPENAI),
    ]
    stats = D.DataStats()
    rows = D.tokenize_conversations(tok, convs, 40, stats)
    assert len(rows) == 2 and stats.truncated == 1 and stats.skipped_too_long == 1
    assert all(len(r["input_ids"]) <= 40 for r in rows)
    with pytest.raises(UserError, match="--max-length 3"):
        D.tokenize_conversations(tok, convs[:2], 3, D.DataStats())


def test_split_is_seeded_2_to_10():
    train, val = D.split_train_validation(list(range(120)), seed=1)
    assert len(val) == 20 and len(train) == 100 and not set(train) & set(val)
    assert D.split_train_validation(list(range(120)), seed=1) == (train, val)
    assert D.split_train_validation(list(range(120)), seed=2) != (train, val)


def test_collator_pads_per_batch_on_the_right():
    from fa_adapt.collator import ChatCollator

    batch = ChatCollator(pad_token_id=0)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
