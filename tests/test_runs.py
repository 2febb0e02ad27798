"""The run-folder format (crisp.runs): atomic writes, readers that name the file and the fault, runs.csv."""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import pandas as pd
import pytest

from crisp import runs
from crisp.errors import RunFormatError


def metrics(experiment="dense_baseline", seed=0, task="sst2", model="tiny:bert", sparsity=0.0, correct=45):
    return {
        "task": task,
        "dataset": "synthetic",
        "model": model,
        "model_slug": model.replace(":", "-"),
        "experiment": experiment,
        "seed": seed,
        "pattern": "dense" if sparsity == 0 else "topk",
        "sparsity": sparsity,
        "apply": "train_and_eval",
        "attention_dropout": None,
        "metric": "accuracy",
        "validation": {"accuracy": correct / 50, "correct": correct, "total": 50, "loss": 0.4, "mcc": 0.8, "f1": 0.9,
                       "primary": correct / 50, "nll": 0.4, "ece": 0.05, "brier": 0.2},
        "diagnostics": {"attention_entropy": [1.0, 2.0], "kept_fraction": [0.25, 0.75]},
        "train_loss": 0.3,
        "train_loss_mean": 0.5,
        "steps": 10,
        "epochs": 1,
        "resumed_from_step": 0,
        "wall_time_s": 2.0,
        "train_examples_per_s": 160.0,
        "train_flops": 1e12,
        "achieved_flops_per_s": 5e11,
        "peak_memory_mb": 900.0,
        "mfu": None,
    }


def predictions(n=50, classes=2):
    rows = []
    for index in range(n):
        probabilities = [0.1 / (classes - 1)] * classes
        probabilities[index % classes] = 0.9
        rows.append({"index": index, "label": index % classes, "prediction": index % classes, "probability": 0.9,
                     **{f"prob_{k}": p for k, p in enumerate(probabilities)}})
    return pd.DataFrame(rows)


HISTORY = [{"step": 5, "epoch": 0.5, "train_loss": 0.6, "validation_loss": 0.5, "validation_accuracy": 0.8,
            "validation_primary": 0.8},
           {"step": 10, "epoch": 1.0, "train_loss": 0.3, "validation_loss": 0.4, "validation_accuracy": 0.9,
            "validation_primary": 0.9}]
ATTENTION = {"experiment": "dense_baseline", "seed": 0, "text": "good", "tokens": ["[CLS]", "good", "[SEP]"],
             "layers": [[[1 / 3] * 3] * 3] * 2}


def write(run_dir, **changes):
    runs.write_run(run_dir, metrics(**changes), HISTORY, predictions(), ATTENTION)
    return run_dir


def test_a_written_run_reads_back(tmp_path):
    run_dir = write(tmp_path / "run")
    assert sorted(path.name for path in run_dir.iterdir()) == sorted(runs.RUN_FILES)  # no temporary files left
    assert runs.read_metrics(run_dir) == metrics()
    assert runs.read_metrics(run_dir / "metrics.json") == metrics()
    assert runs.read_history(run_dir).to_dict("records") == HISTORY
    read = runs.read_predictions(run_dir)
    assert list(read.index) == list(range(50))
    assert list(read.columns) == ["label", "prediction", "probability", "prob_0", "prob_1"]
    assert runs.read_attention(run_dir) == ATTENTION


def test_run_row_flattens_what_runs_csv_shows():
    row = runs.run_row(metrics(correct=40))
    assert list(row) == runs.RUN_COLUMNS
    assert row["validation_accuracy"] == row["primary"] == 0.8 and (row["correct"], row["total"]) == (40, 50)
    assert row["loss_gap"] == pytest.approx(0.4 - 0.3)
    assert row["attention_entropy_mean"] == 1.5 and row["kept_fraction_mean"] == 0.5
    assert row["examples_per_s"] == 160.0 and row["mfu"] is None
    assert (row["task"], row["model_slug"], row["metric"], row["apply"]) == ("sst2", "tiny-bert", "accuracy",
                                                                             "train_and_eval")


def test_collect_runs_orders_the_runs_and_refuses_duplicates(tmp_path):
    folders = [
        write(tmp_path / "a", experiment="aggressive_sparse", sparsity=0.8, seed=1),
        write(tmp_path / "b", experiment="dense_baseline", seed=1),
        write(tmp_path / "c", experiment="dense_baseline", seed=0),
        write(tmp_path / "d", experiment="dense_baseline", seed=0, task="mrpc"),
    ]
    table = runs.collect_runs(folders)
    assert list(table.columns) == runs.RUN_COLUMNS
    assert list(zip(table["task"], table["experiment"], table["seed"])) == [
        ("mrpc", "dense_baseline", 0), ("sst2", "dense_baseline", 0), ("sst2", "dense_baseline", 1),
        ("sst2", "aggressive_sparse", 1)]

    with pytest.raises(RunFormatError, match="appears in several run folders"):
        runs.collect_runs([folders[2], write(tmp_path / "again", experiment="dense_baseline", seed=0)])
    with pytest.raises(RunFormatError, match="disagree on pattern/sparsity"):
        runs.collect_runs([folders[0], write(tmp_path / "e", experiment="aggressive_sparse", sparsity=0.5, seed=2)])
    with pytest.raises(RunFormatError, match="No runs"):
        runs.collect_runs([])


def fail_half_way(handle, data):
    handle.write(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failing_file", runs.RUN_FILES)
def test_a_full_disk_leaves_no_truncated_file_and_no_complete_looking_run(tmp_path, monkeypatch, failing_file):
    old = write(tmp_path / "run")  # an earlier complete run of the same folder, now rewritten
    old_bytes = {name: (old / name).read_bytes() for name in runs.RUN_FILES}
    runs.write_run(tmp_path / "new", metrics(correct=10), HISTORY[:1], predictions(), ATTENTION)
    new_bytes = {name: (tmp_path / "new" / name).read_bytes() for name in runs.RUN_FILES}
    real_write = runs._write_all

    def write_all(handle, data):  # the disk fills up half-way through one file
        (fail_half_way if f".{failing_file}.tmp-" in handle.name else real_write)(handle, data)

    monkeypatch.setattr(runs, "_write_all", write_all)
    with pytest.raises(OSError, match="No space left"):
        runs.write_run(old, metrics(correct=10), HISTORY[:1], predictions(), ATTENTION)

    assert not (old / "metrics.json").exists()  # the folder no longer looks complete
    assert sorted(path.name for path in old.iterdir()) == sorted(set(runs.RUN_FILES) - {"metrics.json"})
    for name in set(runs.RUN_FILES) - {"metrics.json"}:  # each file whole, old or new, never half
        assert (old / name).read_bytes() in (old_bytes[name], new_bytes[name])
    if failing_file != "metrics.json":
        assert (old / failing_file).read_bytes() == old_bytes[failing_file]
    with pytest.raises(RunFormatError, match="metrics.json: no such file"):
        runs.read_metrics(old)


@pytest.mark.parametrize(
    ("name", "read"), [("metrics.json", runs.read_metrics), ("attention.json", runs.read_attention)]
)
def test_a_truncated_json_file_is_named(tmp_path, name, read):
    run_dir = write(tmp_path / "run")
    path = run_dir / name
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(RunFormatError, match=rf"{name} is not valid JSON.*truncated"):
        read(run_dir)


@pytest.mark.parametrize("key", ["validation.primary", "diagnostics.kept_fraction", "model_slug", "mfu"])
def test_a_missing_metrics_key_is_named(tmp_path, key):
    run_dir = write(tmp_path / "run")
    content = json.loads((run_dir / "metrics.json").read_text())
    *parents, last = key.split(".")
    holder = content
    for parent in parents:
        holder = holder[parent]
    del holder[last]
    (run_dir / "metrics.json").write_text(json.dumps(content))
    with pytest.raises(RunFormatError, match=rf"metrics\.json has no key '{key}'"):
        runs.read_metrics(run_dir)


def test_an_accuracy_in_percent_is_caught(tmp_path):
    run_dir = write(tmp_path / "run")
    content = json.loads((run_dir / "metrics.json").read_text())
    content["validation"]["accuracy"] = 90.0
    (run_dir / "metrics.json").write_text(json.dumps(content))
    with pytest.raises(RunFormatError, match="disagrees with"):
        runs.read_metrics(run_dir)


def test_damaged_csv_files_are_named_with_the_missing_column(tmp_path):
    run_dir = write(tmp_path / "run")
    pd.read_csv(run_dir / "predictions.csv").drop(columns="prediction").to_csv(run_dir / "predictions.csv", index=False)
    with pytest.raises(RunFormatError, match=r"predictions\.csv lacks column\(s\) prediction"):
        runs.read_predictions(run_dir)
    pd.read_csv(run_dir / "history.csv").drop(columns="validation_loss").to_csv(run_dir / "history.csv", index=False)
    with pytest.raises(RunFormatError, match=r"history\.csv lacks column\(s\) validation_loss"):
        runs.read_history(run_dir)
    (run_dir / "history.csv").write_text("")
    with pytest.raises(RunFormatError, match=r"history\.csv cannot be read"):
        runs.read_history(run_dir)


def test_predictions_need_every_class_probability(tmp_path):
    run_dir = write(tmp_path / "run")
    pd.read_csv(run_dir / "predictions.csv").drop(columns="prob_1").to_csv(run_dir / "predictions.csv", index=False)
    with pytest.raises(RunFormatError, match="prob_0 .. prob_"):
        runs.read_predictions(run_dir)


def test_a_ragged_attention_matrix_is_named(tmp_path):
    run_dir = write(tmp_path / "run")
    (run_dir / "attention.json").write_text(json.dumps({**ATTENTION, "layers": [[[1.0, 0.0]] * 3]}))
    with pytest.raises(RunFormatError, match=r"layer 0 is not 3 x 3"):
        runs.read_attention(run_dir)


def test_reading_runs_needs_no_torch():
    code = "import sys, crisp.runs; assert 'torch' not in sys.modules and 'pandas' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_metrics_json_is_strict_json_with_undefined_values_as_null(tmp_path):
    undefined = metrics()
    undefined["validation"]["mcc"] = float("nan")  # e.g. a run that predicts one class only
    undefined["diagnostics"]["kept_fraction"] = [float("nan"), 0.5]
    runs.write_run(tmp_path / "run", undefined, HISTORY, predictions(), ATTENTION)

    def no_constants(name):
        raise AssertionError(f"metrics.json holds {name}: not JSON")

    text = (tmp_path / "run" / "metrics.json").read_text()
    written = json.loads(text, parse_constant=no_constants)
    assert written["validation"]["mcc"] is None and written["diagnostics"]["kept_fraction"] == [None, 0.5]
    read = runs.read_metrics(tmp_path / "run")
    assert read["validation"]["mcc"] is None
    assert runs.run_row(read)["kept_fraction_mean"] == 0.5  # the mean over the defined values


def test_an_infinite_value_is_refused_naming_its_key(tmp_path):
    infinite = metrics()
    infinite["validation"]["brier"] = float("inf")
    with pytest.raises(ValueError, match="validation.brier"):
        runs.write_run(tmp_path / "run", infinite, HISTORY, predictions(), ATTENTION)
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("key", ["train_loss", "validation.loss", "validation.primary"])
@pytest.mark.parametrize("value", [float("nan"), None])
def test_a_diverged_run_is_never_tabulated(tmp_path, key, value):
    diverged = metrics()
    if "." in key:
        diverged["validation"][key.split(".")[1]] = value
    else:
        diverged[key] = value
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # as an older crisp wrote it (a bare NaN), or strict JSON with the value missing
    (run_dir / "metrics.json").write_text(json.dumps(diverged))
    with pytest.raises(RunFormatError, match=key.replace(".", r"\.")):
        runs.collect_runs([run_dir])
