"""`--data` through `datasets`, offline: a Persian dataset of the SlimOrca schema, saved with
`save_to_disk` and written as parquet / jsonl data folders, read by the reader a hub name takes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from adapt.errors import UserError
from fa_adapt.data import load_conversations

SYSTEM = "تو یک دستیار مفید هستی که به فارسی پاسخ می‌دهی."
GOOD = [
    [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"پرسش {i}: پایتخت ایران کجاست؟"},
        {"role": "assistant", "content": f" پاسخ {i}: تهران پایتخت ایران است. "},  # stripped when read
    ]
    for i in range(30)
]
# (index in the rows, the `message` cell, the counted reason, what strict mode says about the row)
BAD = [
    (2, None, "wrong columns", "columns: expected one of message, messages, conversations; found id"),
    (9, [{"role": "wizard", "content": "سلام"}], "unknown role", "message[0].role: unknown role 'wizard'"),
    (17, [{"role": "user", "content": "سلام"}, {"role": "assistant", "content": "  "}], "empty content",
     "message[1].content: empty"),
    (33, [{"role": "user", "content": "فقط یک پرسش"}], "no assistant turn", "message: no assistant turn"),
]  # fmt: skip
TOTAL = len(GOOD) + len(BAD)


def _rows() -> list[dict]:
    """The source's schema: an `id` and a `message` list of {role, content}; bad rows interleaved."""
    rows = [{"id": f"good-{i}", "message": m} for i, m in enumerate(GOOD)]
    for index, message, _, _ in BAD:
        rows.insert(index, {"id": f"bad-{index}", "message": message})
    return rows


def _expected(turns: list[list[dict]]) -> list[list[dict]]:
    return [[{"role": t["role"], "content": t["content"].strip()} for t in m] for m in turns]


@pytest.fixture(scope="module")
def datasets():
    return pytest.importorskip("datasets")


@pytest.fixture(scope="module", params=["save_to_disk", "save_to_disk-dict", "parquet", "jsonl"])
def folder(request, datasets, tmp_path_factory) -> Path:
    """The same rows as each kind of local `datasets` folder."""
    return _write(datasets, request.param, tmp_path_factory.mktemp(request.param))


def _write(datasets, kind: str, out: Path) -> Path:
    ds = datasets.Dataset.from_list(_rows())
    if kind == "save_to_disk":
        ds.save_to_disk(str(out))
    elif kind == "save_to_disk-dict":
        datasets.DatasetDict({"train": ds, "test": ds.select(range(3))}).save_to_disk(str(out))
    elif kind == "parquet":  # the hub's own layout: data/train-NNNNN-of-NNNNN.parquet shards
        (out / "data").mkdir()
        half = TOTAL // 2
        ds.select(range(half)).to_parquet(str(out / "data" / "train-00000-of-00002.parquet"))
        ds.select(range(half, TOTAL)).to_parquet(str(out / "data" / "train-00001-of-00002.parquet"))
    else:
        lines = [json.dumps(r, ensure_ascii=False) for r in _rows()]
        (out / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


@pytest.fixture
def pulled(datasets, monkeypatch) -> list[int]:
    """Counts the rows pulled out of any `datasets.IterableDataset`: what the reader really read."""
    count = [0]
    real_iter = datasets.IterableDataset.__iter__

    def counting(self):
        for row in real_iter(self):
            count[0] += 1
            yield row

    monkeypatch.setattr(datasets.IterableDataset, "__iter__", counting)
    return count


def test_conversations_and_roles_come_back(folder, pulled):
    conversations, stats = load_conversations(folder)
    assert conversations == _expected(GOOD)
    assert conversations[0][0] == {"role": "system", "content": SYSTEM}
    assert (stats.rows, stats.bad_rows, pulled[0]) == (TOTAL, len(BAD), TOTAL)
    assert stats.bad_reasons == {reason: 1 for _, _, reason, _ in BAD}


def test_limit_stops_reading_without_loading_the_split(folder, pulled):
    conversations, stats = load_conversations(folder, limit=5)
    assert conversations == _expected(GOOD[:5])
    # 5 usable rows and the one bad row (row 3) before them were pulled; the other 28 never were
    assert pulled[0] == stats.rows == 6 and stats.bad_rows == 1


def test_strict_names_the_bad_row(folder):
    index, _, _, said = BAD[0]
    with pytest.raises(UserError) as err:
        load_conversations(folder, strict=True)
    assert str(err.value) == f"{folder}: row {index + 1}: {said}"


@pytest.mark.parametrize(("index", "message", "said"), [(b[0], b[1], b[3]) for b in BAD])
def test_strict_names_each_kind_of_bad_row(datasets, tmp_path, index, message, said):
    rows = [{"id": f"good-{i}", "message": m} for i, m in enumerate(GOOD)]
    position = min(index, len(GOOD))  # the only bad row (strict stops at the first), as near its place
    rows.insert(position, {"id": "bad", "message": message})
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path))
    with pytest.raises(UserError) as err:
        load_conversations(tmp_path, strict=True)
    assert str(err.value).startswith(f"{tmp_path}: row {position + 1}: {said}")
    assert "\n" not in str(err.value)


def test_a_hub_name_takes_the_same_streaming_reader(datasets, tmp_path, monkeypatch, pulled):
    """The name goes to `load_dataset(name, split="train", streaming=True)`; here it is answered by a
    local parquet folder, since the hub cannot be reached from the tests."""
    folder = _write(datasets, "parquet", tmp_path)
    calls = []
    real_load = datasets.load_dataset

    def load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        return real_load(str(folder), **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    conversations, stats = load_conversations("universitytehran/SlimOrca", limit=8)
    assert calls == [("universitytehran/SlimOrca", {"split": "train", "streaming": True})]
    assert conversations == _expected(GOOD[:8]) and stats.bad_rows == 1
    assert pulled[0] == 9 < TOTAL


def test_a_generator_backed_stream_is_pulled_only_as_far_as_the_limit(datasets, monkeypatch):
    produced = []

    def source():
        for i, turns in enumerate(GOOD):
            produced.append(i)
            yield {"message": turns}

    stream = datasets.IterableDataset.from_generator(source)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, **kw: stream)
    conversations, _ = load_conversations("universitytehran/SlimOrca", limit=5)
    assert conversations == _expected(GOOD[:5])
    assert produced == [0, 1, 2, 3, 4]  # the generator was never asked for a sixth row


@pytest.mark.parametrize(
    ("column", "turn"),
    [
        ("messages", lambda role, text: {"role": role, "content": text}),
        ("conversations", lambda role, text: {"from": {"user": "human", "assistant": "gpt"}[role], "value": text}),
        ("message", lambda role, text: {"from": role, "value": text}),
    ],
    ids=["messages", "conversations-sharegpt", "message-from-value"],
)  # fmt: skip
def test_other_columns_and_turn_keys(datasets, tmp_path, column, turn):
    rows = [{column: [turn("user", f"سلام {i}"), turn("assistant", f"درود {i}")]} for i in range(4)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path))
    conversations, stats = load_conversations(tmp_path)
    assert stats.bad_rows == 0
    assert conversations == [
        [{"role": "user", "content": f"سلام {i}"}, {"role": "assistant", "content": f"درود {i}"}] for i in range(4)
    ]  # fmt: skip


def test_a_folder_mixing_both_turn_forms(datasets, tmp_path):
    """One schema for all rows gives every turn role, content, from and value (None where absent)."""
    rows = [
        {"message": [{"role": "user", "content": "سلام"}, {"role": "assistant", "content": "درود"}]},
        {"message": [{"from": "human", "value": "چطوری؟"}, {"from": "gpt", "value": "خوبم"}]},
        {"prompt": "بدون گفتگو"},
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    conversations, stats = load_conversations(tmp_path)
    assert [[t["role"] for t in c] for c in conversations] == [["user", "assistant"]] * 2
    assert conversations[1][1]["content"] == "خوبم"
    assert stats.bad_reasons == {"wrong columns": 1}
    with pytest.raises(UserError, match=r"row 3: columns: expected one of .*; found prompt$"):
        load_conversations(tmp_path, strict=True)


def test_a_dataset_with_no_conversation_column_is_one_line(datasets, tmp_path):
    datasets.Dataset.from_list([{"instruction": "a", "output": "b"}] * 3).save_to_disk(str(tmp_path))
    with pytest.raises(UserError) as err:
        load_conversations(tmp_path)
    assert str(err.value) == (
        f"--data {tmp_path}: no column named message, messages, conversations; found instruction, output"
    )


def test_without_the_datasets_package_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(UserError) as err:
        load_conversations("universitytehran/SlimOrca")
    assert str(err.value) == (
        "--data universitytehran/SlimOrca: reading a hub dataset needs the datasets package: "
        "pip install 'adapt[hub]'"
    )


def test_offline_a_hub_name_is_one_line_naming_the_dataset(datasets, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # both libraries read the variables when first imported, which may have happened already
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    name = "adapt-tests/no-such-dataset"  # never in any cache, so offline mode cannot answer it
    with pytest.raises(UserError) as err:
        load_conversations(name)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"--data {name}: could not load the hub dataset (")
    assert message.endswith("offline, give a local .jsonl/.json/.parquet/.csv file or a `datasets` folder")


def test_a_plain_folder_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("not a dataset", encoding="utf-8")
    with pytest.raises(UserError, match="a folder with no dataset in it"):
        load_conversations(tmp_path)


def test_cli_a_plain_folder_as_data_is_a_one_line_error_exit_2(tmp_path):
    from typer.testing import CliRunner

    from adapt.cli import app

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("not a dataset", encoding="utf-8")
    result = CliRunner().invoke(app, ["finetune", "--data", str(plain), "--output", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and result.output.rstrip().endswith(errors[0]), result.output
    assert errors[0].startswith(f"error: --data {plain}: is a folder with no dataset in it")
    assert not (tmp_path / "run").exists()  # refused before the run folder or any model
