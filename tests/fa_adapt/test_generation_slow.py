"""Generation on the real Gemma 3 270M (4-bit NF4): `adapt generate base --json` ends cleanly."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adapt.cli import app


@pytest.mark.slow
def test_generate_base_json_stops_or_hits_the_limit():
    result = CliRunner().invoke(
        app, ["generate", "base", "ملکه الیزابت کیست؟", "--max-new-tokens", "6", "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(out) == {"prompt", "answer", "stopped", "tokens"}
    assert out["prompt"] == "ملکه الیزابت کیست؟"
    # either it ended with <|im_end|>/<eos> before the limit, or it used exactly the limit
    assert (out["stopped"] and 1 <= out["tokens"] <= 6) or (not out["stopped"] and out["tokens"] == 6)
    assert "<|im_end|>" not in out["answer"] and "<|im_start|>" not in out["answer"]


def test_cli_errors_are_one_line():
    runner = CliRunner()
    bad = runner.invoke(app, ["generate", "/no/such/run", "hi"])
    assert bad.exit_code == 2 and "/no/such/run: does not exist" in bad.output
    bad = runner.invoke(app, ["evaluate", "base", "--prompts", "/no/such.txt"])
    assert bad.exit_code == 2 and "--prompts /no/such.txt: file not found" in bad.output
    bad = runner.invoke(app, ["chat", "base", "--rtl", "sideways"])
    assert bad.exit_code == 2 and "--rtl" in bad.output
