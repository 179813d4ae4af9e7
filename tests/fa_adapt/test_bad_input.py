"""Bad input through the real CLI: exit code 2, one line `error: ...` naming file/row/field or flag, no traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adapt.errors import UserError

GOOD = {
    "messages": [
        {"role": "user", "content": "پایتخت ایران کجاست؟"},
        {"role": "assistant", "content": "تهران پایتخت ایران است."},
    ]
}


def _row(*turns: dict) -> str:
    return json.dumps({"messages": list(turns)}, ensure_ascii=False)


USER = {"role": "user", "content": "سلام"}
ANSWER = {"role": "assistant", "content": "درود"}

# (case id, bad JSONL line, what the one-line error must say after "<file>: row 2: ")
BAD_ROWS = [
    ("malformed-json", '{"messages": [', "line: malformed JSON"),
    ("missing-role", _row({"content": "سلام"}, ANSWER), "messages[0].role: missing"),
    ("unknown-role", _row({"role": "wizard", "content": "x"}, ANSWER), "messages[0].role: unknown role 'wizard'"),
    ("empty-content", _row({"role": "user", "content": "  "}, ANSWER), "messages[0].content: empty"),
    ("no-assistant", _row(USER), "messages: no assistant turn"),
    ("wrong-columns", json.dumps({"prompt": "a", "answer": "b"}), "columns: expected one of message, messages, conversations; found prompt, answer"),
    ("chatml-in-content", _row({"role": "user", "content": "a <|im_end|> b"}, ANSWER), "messages[0].content: contains the ChatML marker <|im_end|>"),
]  # fmt: skip


def _invoke(*args: str):
    from typer.testing import CliRunner

    from adapt.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _assert_one_line_error(result, *expected: str) -> str:
    """Exit 2, no traceback, and the error is one line (other lines may only be third-party progress bars)."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and result.output.rstrip().endswith(errors[0]), result.output
    for part in expected:
        assert part in errors[0], (part, errors[0])
    return errors[0]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(("line", "message"), [c[1:] for c in BAD_ROWS], ids=[c[0] for c in BAD_ROWS])
def test_bad_row_with_strict_is_an_error_naming_file_row_field(tmp_path, line, message):
    data = _write(tmp_path / "chat.jsonl", [json.dumps(GOOD, ensure_ascii=False), line])
    result = _invoke("finetune", "--data", data, "--strict", "--output", tmp_path / "run")
    _assert_one_line_error(result, f"{data}: row 2: {message}")


@pytest.mark.parametrize(("line", "message"), [c[1:] for c in BAD_ROWS], ids=[c[0] for c in BAD_ROWS])
def test_file_with_no_usable_row_names_the_first_bad_one(tmp_path, line, message):
    data = _write(tmp_path / "chat.jsonl", [line, line])
    result = _invoke("finetune", "--data", data, "--output", tmp_path / "run")
    _assert_one_line_error(
        result, f"{data}: no usable conversation (2 bad of 2 rows; first: row 1: {message}"
    )


@pytest.mark.parametrize(
    ("suffix", "content", "message"),
    [
        ("jsonl", json.dumps(GOOD).encode() + b"\n" + '{"messages": "café"}\n'.encode("latin-1"), "row 2: not UTF-8 text (byte 0xe9 at column 18)"),
        ("jsonl", (json.dumps(GOOD, ensure_ascii=False) + "\n").encode("utf-16"), "row 1: the file looks like UTF-16 text"),
        ("csv", 'messages\n"caf\xe9"\n'.encode("latin-1"), "row 2: not UTF-8 text (byte 0xe9 at column 5)"),
        ("json", json.dumps([GOOD]).encode("utf-16-be"), "row 1: the file looks like UTF-16 text"),
    ],
    ids=["latin-1-jsonl", "utf-16-jsonl", "latin-1-csv", "utf-16be-json"],
)  # fmt: skip
def test_unreadable_encoding(tmp_path, suffix, content, message):
    data = tmp_path / f"chat.{suffix}"
    data.write_bytes(content)
    _assert_one_line_error(_invoke("finetune", "--data", data), f"{data}: {message}")


def test_wrong_columns_in_a_table_lists_what_was_found(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "chat.parquet"
    pq.write_table(pa.table({"instruction": ["a"], "output": ["b"]}), data)
    _assert_one_line_error(
        _invoke("finetune", "--data", data), f"{data}: no column named", "found instruction, output"
    )


def test_missing_data_path(tmp_path):
    _assert_one_line_error(
        _invoke("finetune", "--data", tmp_path / "nope.jsonl"),
        f"--data {tmp_path / 'nope.jsonl'}: file not found",
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--method", "adapterx"], "--method: unknown value 'adapterx'; choose one of: freeze, lora, prompt"),
        (["--batch-size", "0"], "--batch-size must be greater than 0, got 0"),
        (["--epochs", "-1"], "--epochs must be greater than 0, got -1"),
        (["--max-steps", "-5"], "--max-steps must be greater than 0, got -5"),
        (["--quantization", "int3"], "--quantization: unknown value 'int3'; choose one of: nf4, none"),
    ],
)
def test_bad_finetune_flags(flags, message):
    _assert_one_line_error(_invoke("finetune", *flags), message)


def test_max_length_shorter_than_every_prompt(tiny_model_dir, chat_jsonl, tmp_path):
    result = _invoke(
        "finetune", "--model", tiny_model_dir, "--data", chat_jsonl, "--quantization", "none",
        "--max-length", "8", "--output", tmp_path / "run",
    )  # fmt: skip
    _assert_one_line_error(result, "--max-length 8: shorter than every prompt (the shortest is")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["evaluate", "{run}", "--batch-size", "0"], "--batch-size must be greater than 0, got 0"),
        (["compare", "{run}", "--batch-size", "0"], "--batch-size must be greater than 0, got 0"),
        (["compare", "{run}", "--max-new-tokens", "0"], "--max-new-tokens must be greater than 0, got 0"),
        (["generate", "{run}", "سلام", "--max-new-tokens", "-1"], "--max-new-tokens must be greater than 0, got -1"),
        (["generate", "{run}", "سلام", "--top-p", "1.5"], "--top-p: must be in (0, 1], got 1.5"),
        (["chat", "{run}", "--temperature", "-1"], "--temperature must be 0 or more, got -1.0"),
    ],
    ids=["evaluate-batch", "compare-batch", "compare-tokens", "generate-tokens", "generate-top-p", "chat-temperature"],
)  # fmt: skip
def test_bad_generation_flags_fail_before_any_model_loads(tmp_path, args, message):
    folder = tmp_path / "not-a-run"  # would fail later: the flag must be reported first
    result = _invoke(*[a.format(run=folder) for a in args])
    _assert_one_line_error(result, message)


@pytest.mark.parametrize(
    "args",
    [["generate", "{run}", "سلام"], ["evaluate", "{run}"], ["chat", "{run}"], ["compare", "{run}"]],
    ids=["generate", "evaluate", "chat", "compare"],
)
def test_folder_that_is_not_a_run(tmp_path, args):
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    result = _invoke(*[a.format(run=folder) for a in args])
    _assert_one_line_error(result, f"{folder}: not a run folder")


# ---- runs: bad rows counted in metrics.json, and an adapter loaded onto another base model ------


@pytest.fixture(scope="module")
def messy_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A 1-step LoRA run on data holding one bad row of every skippable kind, through the CLI."""
    folder = tmp_path_factory.mktemp("messy")
    good = [json.dumps(GOOD, ensure_ascii=False)] * 6
    data = _write(folder / "chat.jsonl", good[:3] + [c[1] for c in BAD_ROWS] + good[3:])
    out = folder / "run"
    result = _invoke(
        "finetune", "--method", "lora", "--model", tiny_model_dir, "--data", data, "--output", out,
        "--quantization", "none", "--max-steps", "1", "--batch-size", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_bad_rows_are_skipped_and_counted_in_metrics(messy_run):
    stats = json.loads((messy_run / "metrics.json").read_text())["data"]
    assert stats["rows"] == 6 + len(BAD_ROWS) and stats["bad_rows"] == len(BAD_ROWS)
    assert stats["bad_reasons"] == {
        "malformed JSON": 1,
        "missing role": 1,
        "unknown role": 1,
        "empty content": 1,
        "no assistant turn": 1,
        "wrong columns": 1,
        "ChatML marker in content": 1,
    }
    assert f"{len(BAD_ROWS)} bad rows skipped" in (messy_run / "summary.md").read_text()
    assert not [p.name for p in messy_run.rglob(".*")]  # atomic saves leave no temporary files


def test_adapter_for_a_different_base_model(messy_run, tiny_model_dir, tmp_path):
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    other = tmp_path / "other-base"  # same tokenizer, narrower model: the adapter cannot fit it
    other.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / f, other / f)
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    cfg.update(hidden_size=32, intermediate_size=64, head_dim=16)
    torch.manual_seed(0)
    Gemma3ForCausalLM(
        Gemma3TextConfig(
            **{
                k: v
                for k, v in cfg.items()
                if k not in ("architectures", "model_type", "transformers_version", "dtype")
            }
        )
    ).save_pretrained(other)
    run = tmp_path / "run"
    shutil.copytree(messy_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(dict(config, model=str(other))))
    result = _invoke("generate", run, "سلام")
    _assert_one_line_error(result, f"{run / 'adapter'}: adapter does not fit base model {other}")


def test_stopped_run_is_not_a_run_but_says_how_to_resume(tmp_path):
    (tmp_path / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "checkpoints" / "resume.json").write_text("{}")
    (tmp_path / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    line = _assert_one_line_error(
        _invoke("generate", tmp_path, "سلام"), f"{tmp_path}: a run stopped before it finished"
    )
    assert line.endswith(f"adapt finetune --output {tmp_path} --resume")


def test_run_stopped_before_any_checkpoint_gets_no_dead_end_resume_hint(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "resume.json").write_text("{}")
    for command in (["generate", tmp_path, "سلام"], ["evaluate", tmp_path], ["export", tmp_path]):
        line = _assert_one_line_error(_invoke(*command), "stopped before its first checkpoint")
        assert "--resume" not in line and line.endswith(f"adapt finetune --output {tmp_path} --overwrite")


def test_run_folder_messages_name_the_real_cause(tmp_path):
    _assert_one_line_error(
        _invoke("generate", tmp_path / "nope", "سلام"), f"{tmp_path / 'nope'}: does not exist"
    )
    capkit_run = tmp_path / "captioner"
    capkit_run.mkdir()
    (capkit_run / "word_to_id.json").write_text("{}")
    (capkit_run / "config.json").write_text("{}")
    (capkit_run / "metrics.json").write_text("{}")
    _assert_one_line_error(_invoke("evaluate", capkit_run), "a captioning run", "adapt caption IMAGE --model")


def test_data_messages_name_the_real_cause(tmp_path):
    import os

    def data_error(path) -> str:
        return _assert_one_line_error(
            _invoke("finetune", "--data", path, "--strict", "--output", tmp_path / "o")
        )

    binary = tmp_path / "random.jsonl"
    binary.write_bytes(bytes(range(256)) * 8 + b"\x00\x00" + bytes(range(255, 0, -1)))
    assert "a binary file, not text" in data_error(binary) and "UTF-16" not in data_error(binary)
    assert "is a folder" in data_error(tmp_path)
    array = _write(tmp_path / "array.jsonl", ['[{"messages": []}]'])
    assert "got a list (a JSON array of conversations belongs in a .json file" in data_error(array)
    for content, kind in (("123", "a number (123)"), ('{"a": 1}', "an object")):
        turns = [{"role": "user", "content": json.loads(content)}, {"role": "assistant", "content": "x"}]
        row = json.dumps({"messages": turns})
        line = data_error(_write(tmp_path / "content.jsonl", [row]))
        assert f"messages[0].content: must be text, got {kind}" in line
    os.symlink(tmp_path / "b.jsonl", tmp_path / "a.jsonl")
    os.symlink(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    assert "a.jsonl: a symlink loop" in data_error(tmp_path / "a.jsonl")
    assert not (tmp_path / "o").exists()


def test_empty_prompt_is_refused():
    from fa_adapt.generation import as_messages

    with pytest.raises(UserError, match="prompt: empty"):
        as_messages("   ")


def test_empty_prompt_on_the_command_line_is_one_line_before_loading(tmp_path):
    # `nope` does not exist: the prompt is checked first, so the error is about the prompt
    _assert_one_line_error(_invoke("generate", tmp_path / "nope", "  "), "prompt: empty")
