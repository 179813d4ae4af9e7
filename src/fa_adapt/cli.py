"""`adapt` commands of fa_adapt: thin wrappers over the library API (filled in per issue)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this package's commands to the root `adapt` app."""
