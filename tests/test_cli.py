"""The `adapt` CLI shell: fast help, version, only real commands, one-line user errors."""

import subprocess
import sys
import time

import typer
from typer.testing import CliRunner

import adapt
import capkit
import fa_adapt
from adapt.cli import app, command
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
