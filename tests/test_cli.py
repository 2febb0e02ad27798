"""The `crisp` command line: help everywhere, settings from JSON or a configuration, errors for people."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crisp.cli import build_parser, main
from crisp.config import load_config
from crisp.settings import as_json, data_settings, flops_settings, train_settings

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["config", "fetch", "data", "train", "flops", "tables", "figures", "bench"]


@pytest.mark.parametrize("command", [[], *[[name] for name in SUBCOMMANDS]])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: crisp" in capsys.readouterr().out


def test_console_script_and_module_both_run():
    for command in (["crisp", "--help"], [sys.executable, "-m", "crisp", "--help"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0 and "flops" in result.stdout


def test_config_prints_the_resolved_configuration_with_overrides(capsys):
    args = [
        "config",
        "--config",
        str(ROOT / "config.yaml"),
        "--config",
        str(ROOT / "config/demo.yaml"),
        "--set",
        "training.epochs=1",
    ]
    assert main(args) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["models"] == ["bundled:minilm"]
    assert resolved["training"]["epochs"] == 1
    assert resolved["training"]["max_grad_norm"] == 1.0  # schema default filled in


def test_settings_are_exactly_what_a_stage_reads():
    config = load_config([ROOT / "config.yaml", ROOT / ".test/config.yaml"])
    train = train_settings(config, "pairs", "tiny:bert", "random_sweep_80", 1)
    assert set(train) == {
        "task",
        "dataset",
        "model",
        "model_revision",
        "tokenizer",
        "max_length",
        "experiment",
        "attention",
        "seed",
        "training",
    }
    assert train["tokenizer"] == "bundled:minilm" and train["dataset"]["text_pair_column"] is not None
    # resources are not settings: changing them reruns nothing
    assert not {"threads", "mem_mb", "runtime_min", "keep_checkpoints"} & set(train["training"])
    assert "max_length" in data_settings(config, "pairs", "bundled:minilm")
    assert set(flops_settings(config, "tiny:bert")) == {"model", "model_revision", "experiments", "profiling"}
    # --settings and --config give the same settings
    other = load_config([ROOT / "config.yaml", ROOT / ".test/config.yaml"], ["training.threads=7"])
    assert as_json(train_settings(other, "pairs", "tiny:bert", "random_sweep_80", 1)) == as_json(train)


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
        ["data", "--config", str(ROOT / "config.yaml"), "--config", str(ROOT / ".test/config.yaml"),
         "--set", f"tasks.mine={{name: local, train_file: {train}, validation_file: {broken}}}",
         "--task", "mine", "--model", "tiny:bert", "--out", str(tmp_path / "data")]
    )  # fmt: skip
    error = capsys.readouterr().err
    assert code == 1
    assert "dev.tsv" in error and "7" in error
    assert not (tmp_path / "data").exists()


def test_unknown_names_are_named(tmp_path, capsys):
    code = main(
        [
            "flops",
            "--config",
            str(ROOT / "config.yaml"),
            "--model",
            "bert-base-nope",
            "--out",
            str(tmp_path / "flops"),
        ]
    )
    assert code == 1
    assert "'bert-base-nope'" in capsys.readouterr().err
    code = main(
        [
            "flops",
            "--config",
            str(ROOT / "config.yaml"),
            "--out",
            str(tmp_path / "flops"),
        ]
    )
    assert code == 1
    assert "--model" in capsys.readouterr().err
    code = main(["flops", "--settings", "{not json", "--out", str(tmp_path / "x.json")])
    assert code == 1
    assert "not valid JSON" in capsys.readouterr().err


def test_a_broken_run_folder_is_one_clear_line(tmp_path, capsys):
    run = tmp_path / "runs" / "sst2" / "tiny-bert" / "dense_baseline" / "seed0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text('{"experiment": "dense_baseline"')  # cut short
    code = main(
        ["tables", "--config", str(ROOT / "config.yaml"), "--runs", str(run), "--out", str(tmp_path / "tables")]
    )
    error = capsys.readouterr().err
    assert code == 1
    assert "metrics.json" in error and "Traceback" not in error


def test_settings_too_long_for_a_command_line_travel_on_standard_input(monkeypatch):
    import io

    from crisp.cli import _settings

    names = [f"label_number_{i}" for i in range(12_000)]
    config = load_config([ROOT / "config.yaml", ROOT / ".test/config.yaml"], [f"tasks.sentiment.label_names={names}"])
    settings = data_settings(config, "sentiment", "bundled:minilm")
    text = as_json(settings)
    assert len(text.encode()) > 128 * 1024  # more than Linux lets one command-line argument be
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    args = build_parser().parse_args(["data", "--settings", "-", "--out", "unused"])
    assert _settings(args, "data", ("task", "tokenizer")) == settings
