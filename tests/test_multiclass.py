"""A three-class task end to end through the library: data, fine-tuning, tables (as MNLI would run)."""

from __future__ import annotations

import random

import pandas as pd

from crisp.data import prepare
from crisp.tables import write_tables
from crisp.tasks import resolve_task
from crisp.train import train_run

COLOURS = ("red", "green", "blue")
TRAINING = {
    "learning_rate": 3e-3, "batch_size": 32, "eval_batch_size": 64, "epochs": 2, "warmup_steps": 0,
    "weight_decay": 0.0, "max_grad_norm": 1.0, "lr_scheduler": "linear", "gradient_accumulation_steps": 1,
    "evals_per_epoch": 1, "checkpoints_per_epoch": 1, "device": "cpu", "precision": "auto",
    "group_by_length": True, "compile": False, "report_to": "none",
}  # fmt: skip


def write_split(path, size, seed):
    rng = random.Random(seed)
    rows = ["premise\thypothesis\tlabel"]
    for _ in range(size):
        label = rng.randrange(3)
        rows.append(f"the car is {COLOURS[label]}\tthe {rng.choice(['old', 'new'])} car\t{COLOURS[label]}")
    path.write_text("\n".join(rows) + "\n")


def test_a_three_class_pair_task_trains_and_is_tabled(tmp_path):
    write_split(tmp_path / "train.tsv", 128, 0)
    write_split(tmp_path / "dev.tsv", 48, 1)
    spec = resolve_task(
        {
            "name": "local", "train_file": str(tmp_path / "train.tsv"), "validation_file": str(tmp_path / "dev.tsv"),
            "text_column": "premise", "text_pair_column": "hypothesis", "label_names": list(COLOURS), "metric": "mcc",
        }
    )  # fmt: skip
    data = prepare(spec, "bundled:minilm", 24, tmp_path / "data")
    runs = []
    experiments = {"dense_baseline": ("dense", 0.0), "topk": ("topk", 0.5)}
    for experiment, (pattern, sparsity) in experiments.items():
        attention = {"pattern": pattern, "sparsity": sparsity, "options": {}, "apply": "train_and_eval"}
        settings = {
            "task": "colours", "dataset": spec, "model": "tiny:distilbert", "tokenizer": "bundled:minilm",
            "max_length": 24, "experiment": experiment, "attention": {**attention, "attention_dropout": None},
            "seed": 0, "training": TRAINING,
        }  # fmt: skip
        metrics = train_run(settings, data, tmp_path / experiment, tmp_path / f"ck-{experiment}")
        assert metrics["metric"] == "mcc" and -1 <= metrics["validation"]["primary"] <= 1
        predictions = pd.read_csv(tmp_path / experiment / "predictions.csv")
        assert {"prob_0", "prob_1", "prob_2"} <= set(predictions.columns)
        runs.append(tmp_path / experiment)

    tables = {
        "baseline": "dense_baseline",
        "tasks": {"colours": {"name": "local", "metric": "mcc"}},
        "models": ["tiny:distilbert"],
        "experiments": {},
        "statistics": {"bootstrap_resamples": 200, "bootstrap_seed": 0, "confidence": 0.95, "power": 0.8},
    }
    write_tables(runs, [], tmp_path / "tables", tables)
    summary = pd.read_csv(tmp_path / "tables" / "summary.csv").set_index("experiment")
    assert list(summary["metric"]) == ["mcc", "mcc"]
    row = summary.loc["topk"]
    # One seed: no interval over seeds, only the one from test-set sampling.
    assert row["sampling_low"] <= row["delta_primary_mean"] <= row["sampling_high"]
