"""Hostile configuration values against the workflow: no value can run a command, paths with shell
characters work end to end, and what cannot work is rejected before any job, in one line naming
the key (or the file and line).
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from workflow_helpers import REPO, copy_repository, run_snakemake

from crisp.layout import data_dir

SMOKE = ".test/config.yaml"
# A space, both quotes, a command substitution, backticks and a command separator.
HOSTILE_RESULTS = "res dir $(touch pwned) `touch pwned2`; it's \"q\""
# Enough label names that the settings JSON alone is longer than one command-line argument may be
# (128 KiB on Linux).
MANY_LABELS = [f"label_number_{i}" for i in range(12_000)]

pytestmark = pytest.mark.pipeline


def shell_commands() -> dict[str, str]:
    """Each rule's shell command, as written in workflow/rules/*.smk."""
    commands = {}
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = path.read_text()
        for rule, body in re.findall(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", text, flags=re.DOTALL | re.MULTILINE):
            if "shell:" in body:
                shell = body.split("shell:", 1)[1]
                commands[rule] = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', shell))
    return commands


def test_every_path_in_every_shell_command_is_quoted():
    commands = shell_commands()
    assert {"data", "train", "flops", "tables", "figures"} <= set(commands)
    # Not paths: the thread count (an integer) and a fixed flag or nothing.
    unquoted_allowed = {"threads", "params.keep"}
    for rule, command in commands.items():
        for field in re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", command):
            name, _, spec = field.partition(":")
            assert spec.endswith("q") or name in unquoted_allowed, f"rule {rule}: {{{field}}} is not quoted"


def write_overlay(workdir: Path, overlay: dict, name: str = "overlay.yaml") -> str:
    (workdir / name).write_text(yaml.safe_dump(overlay, allow_unicode=True))
    return name


@pytest.fixture(scope="module")
def hostile_data_stage(tmp_path_factory):
    """The data stage run for real with a results folder full of shell characters, a local task whose
    files sit in a folder with a space, and 12,000 label names (settings too long for a command line)."""
    workdir = copy_repository(tmp_path_factory.mktemp("hostile") / "repo")
    files = workdir / "my data"
    files.mkdir()
    rows = "".join(f"{word} work number {i}\tlabel_number_{i % 2}\n" for i, word in enumerate(["fine", "weak"] * 8))
    (files / "train.tsv").write_text("sentence\tlabel\n" + rows)
    (files / "dev.tsv").write_text("sentence\tlabel\n" + rows)
    overlay = {
        "results": HOSTILE_RESULTS,
        "models": ["tiny:bert"],
        "tasks": {
            "sentiment": None,
            "pairs": None,
            "many": {
                "name": "local",
                "train_file": "my data/train.tsv",
                "validation_file": "my data/dev.tsv",
                "label_names": MANY_LABELS,
            },
        },
    }
    name = write_overlay(workdir, overlay)
    result = run_snakemake(workdir, "--cores", "1", "--until", "data", "--configfile", SMOKE, name, check=False)
    return workdir, result


def test_a_results_path_with_shell_characters_runs_no_command(hostile_data_stage):
    workdir, result = hostile_data_stage
    assert not (workdir / "pwned").exists() and not (workdir / "pwned2").exists()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_a_results_path_with_spaces_and_quotes_works_for_the_data_stage(hostile_data_stage):
    workdir, result = hostile_data_stage
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    prepared = workdir / data_dir(HOSTILE_RESULTS, "many", "bundled:minilm")
    stats = yaml.safe_load((prepared / "stats.json").read_text())
    assert stats["label_names"] == MANY_LABELS
    assert (workdir / HOSTILE_RESULTS / "logs" / "data" / "many" / f"{prepared.name}.log").is_file()


def test_the_train_tables_and_figures_commands_see_the_results_path_whole(tmp_path):
    workdir = copy_repository(tmp_path / "repo")
    name = write_overlay(workdir, {"results": HOSTILE_RESULTS})
    result = run_snakemake(workdir, "--dry-run", "--printshellcmds", "--configfile", SMOKE, name)
    assert "--out '" + HOSTILE_RESULTS.replace("'", "'\"'\"'") in result.stdout
    for flag in ("--out", "--data", "--checkpoints", "--runs", "--flops", "--tables"):
        assert f"{flag} '{HOSTILE_RESULTS[:8]}" in result.stdout, flag


def test_a_results_path_with_shell_characters_works_through_every_stage(tmp_path):
    workdir = copy_repository(tmp_path / "repo")
    overlay = {
        "results": HOSTILE_RESULTS,
        "models": ["tiny:bert"],
        "tasks": {
            "sentiment": {"name": "synthetic", "synthetic": {"train_size": 64, "validation_size": 32}},
            "pairs": None,
        },
        "seeds": [0],
        "training": {"epochs": 1},
        "experiments": {"random_sparse": None},
        "sweeps": {"random_sweep": None},
    }
    name = write_overlay(workdir, overlay)
    run_snakemake(workdir, "--cores", "2", "--configfile", SMOKE, name)
    assert not (workdir / "pwned").exists() and not (workdir / "pwned2").exists()
    results = workdir / HOSTILE_RESULTS
    assert (results / "tables" / "summary.csv").is_file()
    assert (results / "figures" / "sparsity_effects.pdf").is_file()
    assert len(list((results / "runs").rglob("metrics.json"))) == 1  # the baseline, the only experiment left


@pytest.mark.parametrize("results", ["res/{x}", "res/{task}", "-r"])
def test_a_results_path_that_cannot_work_is_rejected_before_any_job(tmp_path, results):
    workdir = copy_repository(tmp_path / "repo")
    name = write_overlay(workdir, {"results": results})
    result = run_snakemake(workdir, "--dry-run", "--configfile", SMOKE, name, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "config key 'results'" in output and "Traceback" not in output, output[-3000:]


def _limit_memory():
    limit = 3 * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_a_huge_results_value_is_rejected_in_one_line_in_bounded_memory(tmp_path):
    workdir = copy_repository(tmp_path / "repo")
    name = write_overlay(workdir, {"results": "r" * 10_000_000})
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", "--configfile", SMOKE, name],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_memory,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "config key 'results'" in output and "Traceback" not in output and "MemoryError" not in output
    assert len(output) < 20_000  # the value is not repeated in the message


def test_a_duplicate_key_in_a_configfile_is_named_with_its_file_and_line(tmp_path):
    workdir = copy_repository(tmp_path / "repo")
    (workdir / "twice.yaml").write_text("training:\n  device: cpu\n  epochs: 1\ntraining:\n  epochs: 3\n")
    result = run_snakemake(workdir, "--dry-run", "--configfile", SMOKE, "twice.yaml", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "twice.yaml" in output and "line 4" in output and "'training'" in output, output[-3000:]
    assert "Traceback" not in output


def test_a_non_finite_number_in_a_configfile_is_rejected_naming_the_key(tmp_path):
    workdir = copy_repository(tmp_path / "repo")
    (workdir / "nan.yaml").write_text("training:\n  learning_rate: .nan\n")
    result = run_snakemake(workdir, "--dry-run", "--configfile", SMOKE, "nan.yaml", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "config key 'training.learning_rate'" in output and "Traceback" not in output, output[-3000:]


def test_a_deeply_nested_configfile_is_rejected_in_one_line(tmp_path):
    workdir = copy_repository(tmp_path / "repo")
    (workdir / "deep.yaml").write_text("training: " + "{a: " * 200 + "1" + "}" * 200 + "\n")
    result = run_snakemake(workdir, "--dry-run", "--configfile", SMOKE, "deep.yaml", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "deep.yaml" in output and "nested deeper than" in output and "RecursionError" not in output, output[-3000:]


def test_a_config_yaml_nested_a_thousand_deep_is_rejected_in_one_line(tmp_path):
    # The workflow's own configfile is read before Snakemake's directive reads it (PyYAML recurses:
    # 1,000 levels are a RecursionError there). A --configfile that deep is read by Snakemake itself
    # before the workflow loads, out of the workflow's reach; `crisp config --config FILE` names it.
    workdir = copy_repository(tmp_path / "repo")
    config = workdir / "config.yaml"
    config.write_text(config.read_text() + "extra: " + "{a: " * 1000 + "1" + "}" * 1000 + "\n")
    result = run_snakemake(workdir, "--dry-run", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "config.yaml" in output and "nested deeper than" in output, output[-3000:]
    assert "RecursionError" not in output and "Traceback" not in output, output[-3000:]
