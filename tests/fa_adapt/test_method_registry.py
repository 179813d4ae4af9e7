"""A fourth method added from this file alone: the registry is the only place a method is named.

`Norms` trains only the RMSNorm scales (a BitFit-like method) and saves them to its own file.
Training, the run folder (`--overwrite` included), loading, the CLI's `--method` and its flags, and
export all reach it through `fa_adapt.methods` without a line elsewhere naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapt.settings import setting
from fa_adapt.methods import METHODS, Method, register_method

NORMS_FILE = "norms.safetensors"


@dataclass
class NormsSettings:
    only_final: bool = setting(False, "Train only the final norm (--method norms).")


class Norms(Method):
    """Train the normalisation scales only; everything else frozen."""

    name = "norms"
    Settings = NormsSettings
    default_lr = 1e-2
    run_files = (NORMS_FILE,)

    def _trained(self, model: Any) -> dict[str, Any]:
        names = [n for n, _ in model.named_parameters() if "norm" in n]
        if self.settings.only_final:
            names = [n for n in names if n.startswith("model.norm")]
        params = dict(model.named_parameters())
        return {n: params[n] for n in names}

    def apply(self, model: Any, new_token_ids: list[int]) -> Any:
        for p in model.parameters():
            p.requires_grad = False
        for p in self._trained(model).values():
            p.requires_grad = True
        return model

    def save(self, model: Any, out: Path) -> None:
        from safetensors.torch import save_file

        from adapt.runio import atomic_path

        tensors = {n: p.detach().contiguous() for n, p in self._trained(model).items()}
        with atomic_path(out / NORMS_FILE) as tmp:
            save_file(tensors, str(tmp))

    def load(self, model: Any, folder: Path, base: str) -> Any:
        import torch
        from safetensors.torch import load_file

        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in load_file(str(folder / NORMS_FILE)).items():
                params[name].copy_(value)
        return model


@pytest.fixture
def norms_method():
    register_method(Norms)
    yield Norms
    del METHODS["norms"]


def _norms(model) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "norm" in n}


def test_a_method_registered_from_a_test_file_trains_saves_and_loads(
    norms_method, tiny_model_dir, chat_jsonl, tmp_path
):
    import torch

    from fa_adapt import finetune, load_run
    from fa_adapt.loading import load_model
    from fa_adapt.runs import run_entries

    settings = dict(
        method="norms", model=str(tiny_model_dir), data=str(chat_jsonl), output=str(tmp_path / "norms"),
        quantization="none", max_steps=8, batch_size=4, logging_steps=2, eval_steps=4,
    )  # fmt: skip
    out = finetune(**settings)
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "norms" and config["only_final"] is False and config["lr"] == 1e-2
    assert metrics["final_eval_loss"] < metrics["initial_eval_loss"]  # it learned
    assert (out / NORMS_FILE).is_file() and not (out / "adapter").exists()
    assert NORMS_FILE in run_entries()
    # the guard saw the norms get a gradient (they are "unfrozen layers" to it)
    assert all(norm > 0 for norm in metrics["gradient_check"]["first_step_grad_norms"].values())

    base = _norms(load_model(str(tiny_model_dir), quantization="none"))
    run = load_run(out)
    loaded = _norms(run.model)
    assert run.method == "norms"
    assert any(not torch.equal(base[n], loaded[n]) for n in base)  # what it trained changed...
    other = {n: p for n, p in run.model.named_parameters() if "norm" not in n and "embed" not in n}
    plain = dict(load_model(str(tiny_model_dir), quantization="none").named_parameters())
    assert all(torch.equal(p, plain[n]) for n, p in other.items())  # ...and nothing else did

    # --overwrite knows the method's file: the run is replaced, not refused as "other files"
    again = finetune(**settings, overwrite=True)
    assert again == out and (out / NORMS_FILE).is_file()


def test_the_cli_accepts_a_registered_method_and_its_own_flags(
    norms_method, tiny_model_dir, chat_jsonl, tmp_path
):
    import typer
    from typer.testing import CliRunner

    from fa_adapt import cli as fa_cli

    app = typer.Typer()
    fa_cli.register(app)  # flags are built from the methods registered when the commands are added
    runner = CliRunner()
    assert "norms" in runner.invoke(app, ["finetune", "--help"], terminal_width=200).output
    args = [
        "finetune", "--method", "norms", "--only-final", "--model", str(tiny_model_dir),
        "--data", str(chat_jsonl), "--output", str(tmp_path / "cli"), "--quantization", "none",
        "--max-steps", "2", "--eval-steps", "2",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["only_final"] is True
    wrong = runner.invoke(
        app, ["finetune", "--method", "lora", "--only-final", "--output", str(tmp_path / "x")]
    )
    assert wrong.exit_code == 2 and "--only-final applies to --method norms, not lora" in wrong.output
