"""Fine-tuning: it learns, it is reproducible, and it resumes after SIGTERM or SIGKILL with the
same final metrics as an uninterrupted run (CPU, same seed)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crisp.config import load_config
from crisp.data import prepare
from crisp.train import train_run

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = [
    "dataset.synthetic.train_size=640",
    "dataset.synthetic.validation_size=200",
    "training.learning_rate=2e-3",
    "training.warmup_steps=5",
    "training.epochs=10",
    "training.checkpoints_per_epoch=4",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The smoke configuration with a few hundred synthetic sentences, tokenised once."""
    root = tmp_path_factory.mktemp("train")
    config_files = [ROOT / "config.yaml", ROOT / ".test/config.yaml"]
    config = load_config(config_files, OVERRIDES)
    data = prepare(config["dataset"], config["model"], config["max_length"], root / "data")
    return root, config_files, config, data


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_fine_tuning_beats_chance_and_writes_the_run_folder(setup):
    root, _, config, data = setup
    metrics = train_run(config, "dense_baseline", 0, data, root / "learn", root / "learn-checkpoints")
    validation = metrics["validation"]
    assert validation["total"] == 200
    assert validation["accuracy"] == validation["correct"] / validation["total"]
    # chance is 0.5 on balanced data; 0.75 on 200 examples is far beyond sampling noise
    assert validation["accuracy"] >= 0.75, validation
    assert metrics["train_loss"] < 0.5
    assert metrics["steps"] == 200 and metrics["epochs"] == 10
    assert metrics["run_settings"]["attention_pattern"] == "dense"
    assert metrics["config"]["seeds"] == config["seeds"]  # the full resolved configuration
    assert metrics["train_examples_per_s"] > 0
    assert {"torch", "transformers", "datasets"} <= set(metrics["versions"])
    assert "git_commit" in metrics

    history = read_csv(root / "learn" / "history.csv")
    assert len(history) == 10 * config["training"]["evals_per_epoch"]
    assert float(history[-1]["train_loss"]) == metrics["train_loss"]  # logged at the very last step
    assert float(history[-1]["validation_loss"]) < float(history[0]["validation_loss"])

    predictions = read_csv(root / "learn" / "predictions.csv")
    assert [int(p["index"]) for p in predictions] == list(range(200))
    assert sum(p["label"] == p["prediction"] for p in predictions) == validation["correct"]
    assert all(0.5 <= float(p["probability"]) <= 1.0 for p in predictions)

    attention = json.loads((root / "learn" / "attention.json").read_text())
    n = len(attention["tokens"])
    assert len(attention["layers"]) == 2 and len(attention["layers"][0]) == n
    assert all(abs(sum(row) - 1) < 1e-3 for row in attention["layers"][-1])
    assert not (root / "learn-checkpoints").exists()  # removed once the outputs are complete


def short_config(config: dict) -> dict:
    return load_config([], ["training.epochs=2"], base=config)


def test_same_seed_gives_identical_metrics(setup):
    root, _, config, data = setup
    config = short_config(config)
    first = train_run(config, "aggressive_sparse", 3, data, root / "a", root / "a-ck")
    second = train_run(config, "aggressive_sparse", 3, data, root / "b", root / "b-ck")
    assert first["validation"] == second["validation"]
    assert first["train_loss"] == second["train_loss"]
    assert (root / "a" / "predictions.csv").read_text() == (root / "b" / "predictions.csv").read_text()
    assert (root / "a" / "history.csv").read_text() == (root / "b" / "history.csv").read_text()


def crisp_train(config_files, data: Path, out: Path, checkpoints: Path) -> list[str]:
    command = [sys.executable, "-m", "crisp", "train", "--experiment", "aggressive_sparse", "--seed", "0"]
    for path in config_files:
        command += ["--config", str(path)]
    for override in OVERRIDES:
        command += ["--set", override]
    return command + ["--data", str(data), "--out", str(out), "--checkpoints", str(checkpoints)]


@pytest.fixture(scope="module")
def uninterrupted(setup):
    root, config_files, _, data = setup
    subprocess.run(crisp_train(config_files, data, root / "full", root / "full-ck"), check=True, capture_output=True, timeout=600)
    return json.loads((root / "full" / "metrics.json").read_text()), read_csv(root / "full" / "history.csv")


def interrupt_after_a_checkpoint(command: list[str], checkpoints: Path, how: signal.Signals) -> int:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not any(checkpoints.glob("checkpoint-*/trainer_state.json")):  # a complete checkpoint
            assert process.poll() is None, "training ended before it wrote a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        process.send_signal(how)
        return process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_interrupted_run_resumes_to_the_same_metrics(setup, uninterrupted, how):
    root, config_files, _, data = setup
    expected, expected_history = uninterrupted
    out, checkpoints = root / f"resumed-{how.name}", root / f"resumed-{how.name}-ck"
    command = crisp_train(config_files, data, out, checkpoints)

    code = interrupt_after_a_checkpoint(command, checkpoints, how)
    if how == signal.SIGTERM:
        assert code == 128 + signal.SIGTERM  # stopped on its own, after saving a checkpoint
    else:
        assert code == -signal.SIGKILL
    assert not (out / "metrics.json").exists()
    assert any(checkpoints.glob("checkpoint-*"))

    restarted = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "Resuming from" in restarted.stdout + restarted.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_step"] > 0
    assert metrics["validation"] == expected["validation"]
    assert metrics["steps"] == expected["steps"]
    assert metrics["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-6)
    history = read_csv(out / "history.csv")
    # Validation points are identical; the train loss logged for the interval that spans the
    # interruption averages only the steps after the restart (Trainer resets its accumulator).
    assert [(h["step"], h["validation_loss"], h["validation_accuracy"]) for h in history] == [
        (h["step"], h["validation_loss"], h["validation_accuracy"]) for h in expected_history
    ]
    assert not checkpoints.exists()


def test_checkpoints_of_another_configuration_are_not_resumed(setup, capfd):
    root, _, config, data = setup
    config = short_config(config)
    checkpoints = root / "stale-ck"
    stale = checkpoints / "checkpoint-4"
    stale.mkdir(parents=True)
    (checkpoints / "crisp_run_config.json").write_text(json.dumps({"something": "else"}))
    (stale / "trainer_state.json").write_text("{}")
    metrics = train_run(config, "light_sparse", 0, data, root / "fresh", checkpoints)
    assert metrics["resumed_from_step"] == 0
    assert "different configuration" in capfd.readouterr().out
