"""caption-train's settings: `TrainConfig` fields → flags, a YAML `--config` under the flags, checks
as one-line errors, and the `--resume` hint built from the fields."""

from __future__ import annotations

import shlex

import pytest
from typer.testing import CliRunner

from adapt.cli import app
from adapt.errors import UserError
from capkit.train_config import DEFAULT_LR, TrainConfig, resume_command, train_config_from


def test_flags_override_the_config_file_and_path_is_the_data(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("decoder: lstm\nepochs: 5\nbatch-size: 16\ndecoder_config: {hidden_dim: 32}\n")
    cfg = train_config_from(tmp_path / "data", {"epochs": "7", "lr": None}, config)
    assert (cfg.data, cfg.decoder, cfg.epochs, cfg.batch_size) == (str(tmp_path / "data"), "lstm", 7, 16)
    assert cfg.decoder_config == {"hidden_dim": 32} and cfg.lr is None
    cfg.validate()
    assert cfg.lr == DEFAULT_LR["lstm"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epochs": "abc"}, "--epochs must be a number, got 'abc'"),
        ({"epochs": "1.5"}, "--epochs must be a whole number"),
        ({"weight_decay": "-1"}, "--weight-decay must be 0 or more"),
        ({"grad_clip": "0"}, "--grad-clip must be greater than 0"),
        ({"decoder": "gru"}, "--decoder: unknown value 'gru'; choose one of: attention, lstm, transformer"),
    ],
)
def test_bad_values_name_their_flag(tmp_path, values, message):
    with pytest.raises(UserError, match=message):
        train_config_from(tmp_path, values)


def test_a_config_file_with_an_unknown_setting_is_refused(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("epochs: 2\nlearning_rate: 0.1\n")
    with pytest.raises(UserError, match="unknown setting"):
        train_config_from(tmp_path, {}, config)


def test_resume_hint_repeats_every_setting_that_is_not_its_default():
    cfg = TrainConfig(data="d", decoder="transformer", lr=DEFAULT_LR["transformer"], output="out")
    assert resume_command(cfg) == "adapt caption-train d --decoder transformer --output out --resume"
    cfg = TrainConfig(data="d", decoder="lstm", lr=1e-3, weight_decay=0.0, cache_dir="c", output="out")
    argv = shlex.split(resume_command(cfg))
    assert argv[argv.index("--lr") + 1] == "0.001" and argv[argv.index("--weight-decay") + 1] == "0.0"
    assert argv[argv.index("--cache-dir") + 1] == "c" and "--epochs" not in argv


def test_a_bad_number_is_one_line_through_the_cli(tmp_path):
    result = CliRunner().invoke(app, ["caption-train", str(tmp_path), "--epochs", "abc"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --epochs must be a number, got 'abc'"
