"""Chat rows through the `datasets` library: a hub dataset name or a local `datasets` folder, streamed.

`adapt finetune --data universitytehran/SlimOrca` (any `owner/name`) and a local folder, either
written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` or holding data files that
`datasets.load_dataset` reads (parquet, jsonl, json, csv, arrow), go through one reader,
`read_dataset_rows`. It streams the `train` split: rows are pulled one at a time, so
`--max-train-rows N` stops after N usable conversations without downloading or loading the split.
The rows are normalised by `fa_adapt.data.normalize_row`, like the rows of a file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adapt.errors import UserError
from fa_adapt.data import LIST_COLUMNS

DATA_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json", ".csv")
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")  # `datasets` decompresses these itself
OFFLINE_HINT = "; offline, give a local .jsonl/.json/.parquet/.csv file or a `datasets` folder"


def is_datasets_folder(path: Path) -> bool:
    """True when `path` is a folder `datasets` reads as a dataset with a train split: one saved by
    `save_to_disk`, the hub's layout (data files under `data/`), or `train*` data files at its top.
    Any other folder (a folder of the user's files) is not taken for a dataset."""
    if not path.is_dir():
        return False
    if _is_saved(path):
        return True
    if (path / "data").is_dir():
        for _root, dirs, files in os.walk(path / "data"):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]  # `datasets` skips these too
            if any(_is_data_file(name) for name in files if not name.startswith(".")):
                return True
    return any(
        p.is_file() and p.name.lower().startswith("train") and _is_data_file(p.name) for p in path.iterdir()
    )


def _is_saved(path: Path) -> bool:
    """The files `datasets.load_from_disk` itself looks for (a `Dataset`, or a `DatasetDict`)."""
    dataset = (path / "dataset_info.json").is_file() and (path / "state.json").is_file()
    return dataset or (path / "dataset_dict.json").is_file()


def _is_data_file(name: str) -> bool:
    stem, suffix = os.path.splitext(name.lower())
    if suffix in COMPRESSED_SUFFIXES:
        suffix = os.path.splitext(stem)[1]
    return suffix in DATA_SUFFIXES


def read_dataset_rows(source: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) pairs of the `train` split of a hub dataset name (`str`) or a local folder (`Path`).

    The dataset is opened now, so that a missing `datasets` package, an unknown name or no
    network is a `UserError` here; its rows are then read lazily, one per `next()`.
    """
    try:
        import datasets
    except ImportError:
        what = "a `datasets` folder" if isinstance(source, Path) else "a hub dataset"
        raise UserError(
            f"--data {source}: reading {what} needs the datasets package: pip install 'adapt[hub]'"
        ) from None
    saved = stream = None
    try:
        if isinstance(source, Path) and _is_saved(source):
            saved = datasets.load_from_disk(str(source))
        else:
            stream = datasets.load_dataset(str(source), split="train", streaming=True)
    except Exception as err:  # noqa: BLE001 — a bad name, no network, offline mode or a broken folder
        what, hint = (
            ("the `datasets` folder", "") if isinstance(source, Path) else ("the hub dataset", OFFLINE_HINT)
        )
        raise UserError(f"--data {source}: could not load {what} ({_first_line(err)}){hint}") from None
    if saved is not None:
        if isinstance(saved, datasets.DatasetDict):
            if "train" not in saved:
                raise UserError(f"--data {source}: no `train` split (found {', '.join(saved)})")
            saved = saved["train"]
        # an iterable view pulls rows from the memory-mapped arrow files as they are asked for
        stream = saved.to_iterable_dataset()
    names = stream.column_names  # None when a streamed dataset does not declare its features
    if names and not any(c in names for c in LIST_COLUMNS):
        # said now: otherwise a whole hub split would be streamed to find that no row is usable
        raise UserError(
            f"--data {source}: no column named {', '.join(LIST_COLUMNS)}; found {', '.join(names)}"
        )
    return _numbered(stream, source)


def _numbered(stream: Any, source: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows numbered from 1; a read failure mid-stream (network, a bad shard) is a one-line `UserError`."""
    rows = iter(stream)
    rowno = 0
    try:
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as err:  # noqa: BLE001 — whatever the stream raises, the user sees one line
                raise UserError(
                    f"--data {source}: row {rowno + 1}: cannot read ({_first_line(err)})"
                ) from None
            rowno += 1
            # a dataset has one schema: a column a row lacks reads as None; drop it so that the row
            # is judged like the same row of a file ("columns: expected one of ...; found ...")
            yield rowno, {k: v for k, v in row.items() if v is not None}
    finally:
        close = getattr(rows, "close", None)
        if close is not None:  # stopping early (a row limit) releases the open file or download now
            close()


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__
