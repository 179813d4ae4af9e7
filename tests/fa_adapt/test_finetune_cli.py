"""`adapt finetune` through the CLI (YAML config + flag override) and as 2 DDP processes (torchrun, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_cli_yaml_config_and_flag_override(tiny_model_dir, chat_jsonl, tmp_path):
    from typer.testing import CliRunner

    from adapt.cli import app

    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"method: prompt\nmodel: {tiny_model_dir}\ndata: {chat_jsonl}\nquantization: none\n"
        f"max-steps: 2\nbatch-size: 4\noutput: {tmp_path / 'yaml-run'}\n"
    )
    result = CliRunner().invoke(app, ["finetune", "--config", str(cfg), "--method", "lora", "--lr", "0.001"])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "yaml-run" / "config.json").read_text())
    assert written["method"] == "lora" and written["lr"] == 0.001 and written["max_steps"] == 2


def test_cli_bad_data_is_one_line_error(tmp_path):
    from typer.testing import CliRunner

    from adapt.cli import app

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    result = CliRunner().invoke(app, ["finetune", "--data", str(bad), "--strict"])
    assert result.exit_code == 2
    assert "bad.jsonl: row 1: messages: no assistant turn" in result.output


def test_torchrun_two_processes(tiny_model_dir, chat_jsonl, tmp_path):
    out = tmp_path / "ddp"
    script = (
        "from fa_adapt import finetune; "
        f"finetune(method='lora', model={str(tiny_model_dir)!r}, data={str(chat_jsonl)!r}, "
        f"output={str(out)!r}, quantization='none', max_steps=3, batch_size=2, logging_steps=1, device='cpu')"
    )  # device='cpu': two CPU processes (gloo) run anywhere, a 1-GPU machine too
    runner = tmp_path / "run_ddp.py"
    runner.write_text(script)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            str(runner),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 3
