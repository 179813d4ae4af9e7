"""The `adapt` CLI shell: fast help, version, only real commands, one-line user errors."""

import subprocess
import sys
import time

import typer
from typer.testing import CliRunner

import adapt
import capkit
import fa_adapt
from adapt.cli import app
from adapt.commands import command
from adapt.errors import UserError


def test_packages_expose_version():
    assert fa_adapt.__version__ == capkit.__version__ == adapt.__version__
    assert adapt.__version__.count(".") == 2


def test_version_flag():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"adapt {adapt.__version__}"


def test_help_is_fast_and_imports_no_torch():
    # A fresh interpreter, as a user's shell would start it: heavy libraries stay unimported.
    code = (
        "import sys, time; t=time.perf_counter();"
        "from adapt.cli import app; from typer.testing import CliRunner;"
        "r=CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output;"
        "print(time.perf_counter()-t); print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[1:] == ["False", "False"]
    assert time.perf_counter() - start < 5  # generous for a loaded CI machine; typically ~0.3 s


def test_user_error_is_one_line_exit_2():
    demo = typer.Typer()

    def boom(path: str) -> None:
        raise UserError(f"{path}: file not found")

    command(demo, boom)
    result = CliRunner().invoke(demo, ["missing.jsonl"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: missing.jsonl: file not found"
    assert "Traceback" not in result.output


def test_env_names_versions_and_cpu_kind():
    import json
    from importlib import metadata

    result = CliRunner().invoke(app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["torch"] == metadata.version("torch")
    assert info["bitsandbytes"] == metadata.version("bitsandbytes")
    flags = open("/proc/cpuinfo").read().split()
    assert info["avx512_bf16"] == ("avx512_bf16" in flags)
    assert info["cpu_kind"].startswith("AVX512-BF16") == info["avx512_bf16"]
    line = CliRunner().invoke(app, ["env"]).output
    assert f"transformers {metadata.version('transformers')}" in line and info["cpu_kind"] in line


def test_any_cli_module_can_be_imported_first():
    # the package CLIs import their helpers from adapt.commands, never from adapt.cli (which
    # imports them): no import circle whichever a program imports first
    for first in ("adapt.cli", "fa_adapt.cli", "capkit.cli"):
        code = (
            f"import {first}; from adapt.cli import app; "
            "names = {c.name for c in app.registered_commands}; "
            "assert {'finetune', 'generate', 'caption', 'caption-train', 'env'} <= names, names"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 0, (first, proc.stderr[-2000:])


def test_flags_click_cannot_parse_are_one_line_errors_naming_the_flag():
    """One case of each kind, through the root app's hook (adapt.commands.OneLineErrors)."""
    runner = CliRunner()
    cases = {
        ("compare", "--max-new-tokens", "abc"): "--max-new-tokens:",  # a wrong type, Click-typed option
        ("finetune", "--epochs", "abc"): "--epochs must be a number, got 'abc'",  # a generated option
        (
            "finetune",
            "--method",
            "adapterx",
        ): "--method: unknown value 'adapterx'; choose one of: freeze, lora, prompt",
        ("generate",): "Missing argument 'run'",  # a missing argument
        ("finetune", "--bogus"): "No such option: --bogus",  # an unknown option
        ("caption-eval", "x", "y", "--split"): "'--split' requires an argument",
        ("bogus",): "No such command 'bogus'",
    }
    for args, expected in cases.items():
        result = runner.invoke(app, list(args))
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (
            args,
            result.output,
        )
