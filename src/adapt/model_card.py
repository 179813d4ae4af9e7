"""Model cards: `README.md` with Hugging Face front matter, written into a run or model folder.

The metadata goes through `huggingface_hub.ModelCardData`, so the hub (and anything that reads
cards) understands it; the body is Markdown that each package builds from the run's own files,
never typed in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapt.runio import write_text

CARD = "README.md"


def write_card(folder: Path, metadata: dict[str, Any], body: str) -> Path:
    """Write `folder/README.md` atomically: front matter from `metadata` (None values left out)."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(**{k: v for k, v in metadata.items() if v not in (None, [], "")})
    return write_text(folder / CARD, f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n")


def table(rows: list[tuple[str, Any]]) -> str:
    """A two-column Markdown table of (name, value) rows."""
    lines = ["| | |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)
