"""Chat data: read conversations from files or the hub, normalise them, tokenise with assistant-only labels.

Sources (`--data`): a .jsonl/.json/.parquet/.csv file, read here; or, through `fa_adapt.hub_data`, a
hub dataset name (`owner/name`, e.g. `universitytehran/SlimOrca`) or a local `datasets` folder (one
written by `save_to_disk`, or a folder of data files `datasets.load_dataset` reads). Those two share
one reader that streams the `train` split, so `limit` (`--max-train-rows`) stops reading after that
many usable conversations instead of loading the split.

Two public forms are accepted: OpenAI style (`message`/`messages` = list of `{role, content}`, the
form of `universitytehran/SlimOrca`) and ShareGPT (`conversations` = list of `{from, value}`).
Bad rows are skipped and counted (or, with `strict`, raised as a `UserError` naming file, row, field).
"""

from __future__ import annotations

import json
import random
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from adapt.errors import UserError
from fa_adapt.chatml import IM_END, IM_START, Message

LIST_COLUMNS = ("message", "messages", "conversations")
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
}
IGNORE_INDEX = -100
VALIDATION_RATIO = (2, 10)  # validation : train
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def default_data_path() -> Path:
    """The Persian sample dataset shipped inside the package."""
    return Path(str(resources.files("fa_adapt").joinpath("data", "fa_chat_sample.jsonl")))


class BadRow(ValueError):
    """A row that cannot become a conversation; message names the field, `kind` is the counted reason."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class DataStats:
    """Counts of what happened to the rows: reported in metrics.json."""

    rows: int = 0
    bad_rows: int = 0
    bad_reasons: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    skipped_too_long: int = 0

    def bad(self, kind: str) -> None:
        self.bad_rows += 1
        self.bad_reasons[kind] = self.bad_reasons.get(kind, 0) + 1


def _json_kind(value: Any) -> str:
    """How JSON would name `value`'s type: a number, an object, a list, true/false."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


def normalize_row(row: Any) -> list[Message]:
    """One raw row → a list of `{role, content}` with roles mapped to system/user/assistant."""
    if isinstance(row, list):
        raise BadRow(
            "row: expected a JSON object, got a list (a JSON array of conversations belongs in a "
            ".json file, one object per line in .jsonl)",
            "not an object",
        )
    if not isinstance(row, dict):
        raise BadRow(f"row: expected a JSON object, got {_json_kind(row)}", "not an object")
    column = next((c for c in LIST_COLUMNS if c in row), None)
    if column is None:
        found = ", ".join(map(str, row)) or "none"
        raise BadRow(f"columns: expected one of {', '.join(LIST_COLUMNS)}; found {found}", "wrong columns")
    turns = row[column]
    if isinstance(turns, str):  # CSV cells hold the list JSON-encoded
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError:
            raise BadRow(f"{column}: not a JSON-encoded list", "malformed JSON") from None
    if hasattr(turns, "tolist"):
        turns = turns.tolist()
    if not isinstance(turns, list) or not turns:
        raise BadRow(f"{column}: expected a non-empty list of turns", "no turns")
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadRow(f"{column}[{i}]: expected an object", "not an object")
        # `is None`, not a default: a dataset mixing both forms gives every turn all four keys
        raw_role = turn.get("role") if turn.get("role") is not None else turn.get("from")
        content = turn.get("content") if turn.get("content") is not None else turn.get("value")
        if raw_role is None:
            raise BadRow(f"{column}[{i}].role: missing", "missing role")
        role = ROLE_ALIASES.get(str(raw_role).strip().lower())
        if role is None:
            raise BadRow(
                f"{column}[{i}].role: unknown role {raw_role!r}; known: {', '.join(ROLE_ALIASES)}",
                "unknown role",
            )
        if content is not None and not isinstance(content, str):
            raise BadRow(
                f"{column}[{i}].content: must be text, got {_json_kind(content)}", "content not text"
            )
        if content is None or not content.strip():
            raise BadRow(f"{column}[{i}].content: empty", "empty content")
        marker = next((t for t in (IM_START, IM_END) if t in content), None)
        if marker:  # it would tokenise as a real turn boundary, not as text
            raise BadRow(
                f"{column}[{i}].content: contains the ChatML marker {marker}", "ChatML marker in content"
            )
        messages.append({"role": role, "content": content.strip()})
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRow(f"{column}: no assistant turn", "no assistant turn")
    return messages


def _read_rows(path: Path) -> list[tuple[int, Any]]:
    """(row number, raw row) pairs; JSONL lines that do not parse become BadRow placeholders."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows: list[tuple[int, Any]] = []
            for lineno, line in enumerate(_utf8_text(path).split("\n"), 1):
                if not line.strip():
                    continue
                try:
                    rows.append((lineno, json.loads(line)))
                except json.JSONDecodeError as err:
                    rows.append((lineno, BadRow(f"line: malformed JSON ({err.msg})", "malformed JSON")))
            return rows
        if suffix == ".json":
            data = json.loads(_utf8_text(path))
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                raise UserError(f"{path}: expected a JSON list of conversations")
            return list(enumerate(data, 1))
        if suffix in (".parquet", ".csv"):
            import pyarrow.csv
            import pyarrow.parquet

            if suffix == ".csv":
                _utf8_text(path)  # pyarrow's own message for other encodings names no row
            table = pyarrow.parquet.read_table(path) if suffix == ".parquet" else pyarrow.csv.read_csv(path)
            if not any(c in table.column_names for c in LIST_COLUMNS):
                raise UserError(
                    f"{path}: no column named {', '.join(LIST_COLUMNS)}; found {', '.join(table.column_names)}"
                )
            return list(enumerate(table.to_pylist(), 2 if suffix == ".csv" else 1))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: malformed JSON at line {err.lineno} ({err.msg})") from None
    except (OSError, ValueError) as err:  # pyarrow raises ArrowInvalid (a ValueError)
        raise UserError(f"{path}: cannot read ({str(err).splitlines()[0]})") from None
    raise UserError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(FILE_SUFFIXES)}")


def _utf8_text(path: Path) -> str:
    """The file as text; any other encoding is a `UserError` naming the row (line) and byte."""
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in raw[:4096]:  # NULs: UTF-16 sans BOM
        if not _looks_like_utf16(raw[:4096]):
            raise UserError(f"{path}: a binary file, not text (expected {path.suffix or 'JSON lines'} text)")
        line = raw.count(b"\n", 0, max(raw.find(b"\x00"), 0)) + 1
        raise UserError(f"{path}: row {line}: the file looks like UTF-16 text; save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise UserError(
            f"{path}: row {line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {column}); "
            "save the file as UTF-8"
        ) from None


def _looks_like_utf16(head: bytes) -> bool:
    """True when `head` decodes as UTF-16 into mostly printable text (random bytes do not)."""
    for encoding in ("utf-16", "utf-16-le", "utf-16-be"):
        try:
            text = head[: len(head) // 2 * 2].decode(encoding)
        except UnicodeDecodeError:
            continue
        printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
        if text and printable / len(text) > 0.95:
            return True
    return False


def load_conversations(
    source: str | Path | None = None, strict: bool = False, limit: int | None = None
) -> tuple[list[list[Message]], DataStats]:
    """Read and normalise conversations from `source`; `limit` stops reading after that many usable ones.

    `source` is a file (.jsonl/.json/.parquet/.csv), a `datasets` folder or a hub dataset name
    (`owner/name`); `None` is the packaged Persian sample. The last two are streamed (see
    `fa_adapt.hub_data.read_dataset_rows`), so with a `limit` only the rows up to it are read.
    Bad rows are counted in the returned `DataStats`; with `strict` the first is a `UserError`.
    """
    rows, where = _open_source(source)
    stats = DataStats()
    conversations: list[list[Message]] = []
    first_bad = ""
    try:
        for rowno, raw in rows:
            stats.rows += 1
            try:
                if isinstance(raw, BadRow):
                    raise raw
                conversations.append(normalize_row(raw))
            except BadRow as err:
                if strict:
                    raise UserError(f"{where}: row {rowno}: {err}") from None
                stats.bad(err.kind)
                first_bad = first_bad or f"row {rowno}: {err}"
            if limit and len(conversations) >= limit:
                break
    finally:
        if isinstance(rows, Generator):  # a stream stopped early releases its file or download now
            rows.close()
    if not conversations:
        why = f"; first: {first_bad}" if first_bad else ""
        raise UserError(f"{where}: no usable conversation ({stats.bad_rows} bad of {stats.rows} rows{why})")
    return conversations, stats


def is_hub_name(source: str | Path | None) -> bool:
    """True when `--data source` names a hub dataset (`owner/name`, not a local path or data file)."""
    text = str(source or "")
    return (
        text.count("/") == 1
        and not Path(text).exists()
        and Path(text).suffix.lower() not in FILE_SUFFIXES
        and not text.startswith(".")
    )


def _open_source(source: str | Path | None) -> tuple[Iterable[tuple[int, Any]], str]:
    """The (row number, raw row) pairs of `source` and the name its errors use."""
    path = Path(source) if source is not None else default_data_path()
    if path.is_symlink() and not path.exists():
        try:
            path.resolve(strict=True)
        except RuntimeError:
            raise UserError(f"--data {source}: a symlink loop") from None
        except OSError:
            raise UserError(f"--data {source}: a symlink to a missing file ({path.readlink()})") from None
    # imported here: `hub_data` imports this module (for LIST_COLUMNS)
    from fa_adapt.hub_data import is_datasets_folder, read_dataset_rows

    if path.is_dir():
        if not is_datasets_folder(path):
            raise UserError(
                f"--data {source}: is a folder with no dataset in it; give a .jsonl, .json, .parquet or "
                ".csv file, or a `datasets` folder (save_to_disk, data/ files, or train.* files)"
            )
        return read_dataset_rows(path), str(path)
    if path.exists():
        return _read_rows(path), str(path)
    if is_hub_name(source):
        return read_dataset_rows(str(source)), str(source)
    raise UserError(f"--data {source}: file not found")


def encode_conversation(tokenizer: Any, messages: list[Message]) -> tuple[list[int], list[int]]:
    """ChatML token ids and labels: only assistant content and its `<|im_end|>` carry labels.

    Turns are tokenised piece by piece (marker, role header, content, end) so that label
    boundaries are exact and never depend on how a tokenizer merges across pieces.
    """
    start_id, end_id = tokenizer.convert_tokens_to_ids([IM_START, IM_END])
    ids: list[int] = []
    labels: list[int] = []
    if tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE_INDEX)

    def piece(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    newline = piece("\n")
    for m in messages:
        header = [start_id, *piece(m["role"] + "\n")]
        body = piece(m["content"])
        ids += header + body + [end_id] + newline
        if m["role"] == "assistant":
            labels += [IGNORE_INDEX] * len(header) + body + [end_id] + [IGNORE_INDEX] * len(newline)
        else:
            labels += [IGNORE_INDEX] * (len(header) + len(body) + 1 + len(newline))
    return ids, labels


def tokenize_conversations(
    tokenizer: Any, conversations: list[list[Message]], max_length: int, stats: DataStats
) -> list[dict[str, list[int]]]:
    """Encode all conversations; apply the length policy.

    Policy: a conversation longer than `max_length` tokens is cut at `max_length` when at least
    one assistant token survives the cut (counted as truncated); otherwise it is dropped (counted
    as skipped), since a row with no label teaches nothing.
    """
    out = []
    shortest_prompt = None
    for messages in conversations:
        ids, labels = encode_conversation(tokenizer, messages)
        if len(ids) > max_length:
            # tokens before the first labelled one: what --max-length must at least exceed
            prompt_len = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
            ids, labels = ids[:max_length], labels[:max_length]
            if prompt_len >= max_length:
                stats.skipped_too_long += 1
                shortest_prompt = min(shortest_prompt or prompt_len, prompt_len)
                continue
            stats.truncated += 1
        out.append({"input_ids": ids, "labels": labels})
    if not out:
        raise UserError(
            f"--max-length {max_length}: shorter than every prompt (the shortest is {shortest_prompt} tokens "
            "before its first answer token); no conversation keeps an assistant token"
        )
    return out


def split_train_validation(examples: list[Any], seed: int) -> tuple[list[Any], list[Any]]:
    """Seeded shuffle, then 2 : 10 validation : train (at least one of each)."""
    if len(examples) < 2:
        raise UserError(
            f"need at least 2 usable conversations for a train/validation split, got {len(examples)}"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    val_n, train_n = VALIDATION_RATIO
    n_val = min(len(examples) - 1, max(1, round(len(examples) * val_n / (val_n + train_n))))
    val = [examples[i] for i in order[:n_val]]
    train = [examples[i] for i in order[n_val:]]
    return train, val
