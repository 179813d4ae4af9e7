"""A command's stderr holds our own lines only: the libraries' noise is filtered at its source
(`adapt.quiet`), checked against an allow-list of the shapes our commands print."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

OUR_LINES = (
    re.compile(r"^finetune [━╺╸─ ]+ \d+/\d+ [\d:]+ *(loss [\d.]+)? *(val [\d.]+)?$"),  # RichProgress
)


def _stderr_lines(*args: str, cwd: Path) -> list[str]:
    env = {**os.environ, "COLUMNS": "120"}
    done = subprocess.run(
        [sys.executable, "-m", "adapt", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return [line.strip() for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]


def test_finetune_and_caption_print_only_our_own_lines_on_stderr(tiny_model_dir, chat_jsonl, tmp_path):
    # nf4: bitsandbytes loads (its kernels-community message) and a checkpoint is written (the
    # mtime warning), as in a real run
    finetune = _stderr_lines(
        "finetune", "--model", str(tiny_model_dir), "--data", str(chat_jsonl), "--output",
        str(tmp_path / "run"), "--max-steps", "1", cwd=tmp_path,
    )  # fmt: skip
    foreign = [line for line in finetune if not any(p.match(line) for p in OUR_LINES)]
    assert finetune and not foreign, "\n".join(finetune)
    from PIL import Image

    image = tmp_path / "photo.jpg"
    Image.new("RGB", (96, 64), (30, 120, 200)).save(image)
    assert _stderr_lines("caption", str(image), cwd=tmp_path) == []
