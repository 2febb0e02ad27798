"""The `crisp` command line: help everywhere, the resolved configuration, errors for people."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crisp.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["config", "prepare", "train", "profile", "tables", "figures"]


@pytest.mark.parametrize("command", [[], *[[name] for name in SUBCOMMANDS]])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: crisp" in capsys.readouterr().out


def test_console_script_and_module_both_run():
    for command in (["crisp", "--help"], [sys.executable, "-m", "crisp", "--help"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "prepare" in result.stdout


def test_config_prints_the_resolved_configuration_with_overrides(capsys):
    assert main(["config", "--config", str(ROOT / "config.yaml"), "--config", str(ROOT / "config/demo.yaml"), "--set", "training.epochs=1"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"] == "bundled:minilm"
    assert resolved["training"]["epochs"] == 1
    assert resolved["training"]["max_grad_norm"] == 1.0  # schema default filled in


def test_bad_input_is_one_clear_line_and_a_failing_exit(tmp_path, capsys):
    assert main(["config", "--config", str(ROOT / "config.yaml"), "--set", "experiments.light_sparse.sparsity=2"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("crisp config: error: config key 'experiments.light_sparse.sparsity'")
    assert "Traceback" not in error

    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\ngood film\t1\nbad film\t0\n")
    broken = tmp_path / "dev.tsv"
    broken.write_text("sentence\tlabel\nfine\t1\nawful\t7\n")
    code = main(
        ["prepare", "--config", str(ROOT / "config.yaml"), "--config", str(ROOT / ".test/config.yaml"),
         "--set", "dataset.name=local",
         "--set", f"dataset.train_file={train}", "--set", f"dataset.validation_file={broken}",
         "--out", str(tmp_path / "data")]
    )
    error = capsys.readouterr().err
    assert code == 1
    assert "dev.tsv" in error and "7" in error
    assert not (tmp_path / "data").exists()


def test_unknown_experiment_is_named(tmp_path, capsys):
    code = main(["profile", "--config", str(ROOT / "config.yaml"), "--experiment", "nope", "--out", str(tmp_path / "x.json")])
    assert code == 1
    assert "'nope'" in capsys.readouterr().err


def test_a_broken_run_folder_is_one_clear_line(tmp_path, capsys):
    run = tmp_path / "runs" / "dense_baseline" / "seed0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text('{"experiment": "dense_baseline"')  # cut short
    code = main(["tables", "--runs", str(run), "--out", str(tmp_path / "tables")])
    error = capsys.readouterr().err
    assert code == 1
    assert "metrics.json is not valid JSON" in error and "Traceback" not in error
