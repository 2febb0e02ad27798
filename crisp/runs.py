"""The run folder: what one fine-tuning writes, and how it is read back.

    runs/<task>/<model_slug>/<experiment>/seed<seed>/
        attention.json    one validation example: tokens and head-averaged attention of every layer
        history.csv       one row per evaluation during training (step, epoch, losses, accuracy, primary)
        predictions.csv   one row per validation example: index, label, prediction, probability,
                          prob_0 .. prob_{K-1}
        metrics.json      the run's result and how it was made (settings, versions, git commit, and
                          `sources`: the model, tokenizer and data set ids with their Hub commits);
                          written last, so its presence means the folder is complete

Every file is written to a temporary name in the same folder and renamed into place, so a writer that
fails (a full disk, a kill) never leaves a truncated file under the final name. The readers check what
they read and raise RunFormatError naming the file and what is wrong.

Torch-free: `crisp tables` and `crisp figures` read run folders without the ML stack.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

from crisp.errors import RunFormatError
from crisp.layout import RUN_FILES

METRICS_FILE = "metrics.json"
HISTORY_COLUMNS = ("step", "epoch", "train_loss", "validation_loss", "validation_accuracy", "validation_primary")
PREDICTION_COLUMNS = ("index", "label", "prediction", "probability")  # then prob_0 .. prob_{K-1}
ATTENTION_KEYS = ("experiment", "seed", "text", "tokens", "layers")

# runs.csv column -> key path in metrics.json (None: derived in run_row)
RUN_FIELDS = {
    "task": ("task",),
    "dataset": ("dataset",),
    "model": ("model",),
    "model_slug": ("model_slug",),
    "experiment": ("experiment",),
    "seed": ("seed",),
    "pattern": ("pattern",),
    "sparsity": ("sparsity",),
    "apply": ("apply",),
    "attention_dropout": ("attention_dropout",),
    "metric": ("metric",),
    "primary": ("validation", "primary"),
    "validation_accuracy": ("validation", "accuracy"),
    "correct": ("validation", "correct"),
    "total": ("validation", "total"),
    "validation_loss": ("validation", "loss"),
    "train_loss": ("train_loss",),
    "loss_gap": None,  # validation loss - final train loss: the generalisation gap
    "nll": ("validation", "nll"),
    "ece": ("validation", "ece"),
    "brier": ("validation", "brier"),
    "attention_entropy_mean": None,  # mean over layers of diagnostics.attention_entropy
    "kept_fraction_mean": None,  # mean over layers of diagnostics.kept_fraction
    "steps": ("steps",),
    "epochs": ("epochs",),
    "wall_time_s": ("wall_time_s",),
    "examples_per_s": ("train_examples_per_s",),
    "achieved_flops_per_s": ("achieved_flops_per_s",),
    "peak_memory_mb": ("peak_memory_mb",),
    "mfu": ("mfu",),
    # What the run was made from (metrics.json "sources"): the commits of its Hub model, tokenizer and
    # data set; empty for bundled, tiny, local and synthetic inputs.
    "model_revision": None,
    "tokenizer_revision": None,
    "dataset_revision": None,
}
PROVENANCE_COLUMNS = ("model_revision", "tokenizer_revision", "dataset_revision")
RUN_COLUMNS = list(RUN_FIELDS)
# metrics.json keys that measure the machine rather than the result: they differ between two runs of the
# same configuration and seed, everything else is identical on the CPU.
TIMING_KEYS = ("wall_time_s", "train_examples_per_s", "achieved_flops_per_s", "peak_memory_mb", "mfu")
# Runs are told apart by these; two folders with the same values are the same run given twice.
RUN_IDENTITY = ("task", "model", "experiment", "seed")
# A run whose losses or primary metric are not finite numbers diverged: it is no result to tabulate.
FINITE_FIELDS = ("train_loss", "validation_loss", "primary")


# ---------------------------------------------------------------------------------------- writing


def write_run(run_dir: str | Path, metrics: dict, history_rows: list[dict], predictions, attention: dict) -> list[Path]:
    """Write the four files of a run folder, metrics.json last; return their paths.

    predictions: a pandas DataFrame (or a list of row dicts) with PREDICTION_COLUMNS and prob_0 ...
    An older metrics.json is removed first, so a folder whose rewrite fails never looks complete.
    """
    import pandas as pd

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / METRICS_FILE).unlink(missing_ok=True)

    history = pd.DataFrame(history_rows, columns=list(HISTORY_COLUMNS))
    predictions = pd.DataFrame(predictions)
    texts = {
        "attention.json": json.dumps(attention, indent=1) + "\n",
        "history.csv": history.to_csv(index=False, lineterminator="\n"),
        "predictions.csv": predictions.to_csv(index=False, lineterminator="\n"),
        METRICS_FILE: json.dumps(_strict(metrics), indent=2, allow_nan=False) + "\n",
    }
    written = []
    for name in RUN_FILES:
        _replace_atomically(run_dir / name, texts[name].encode())
        written.append(run_dir / name)
    return written


def _strict(value, key: str = ""):
    """value with NaN as null, so that metrics.json is strict JSON: NaN marks a value that is undefined
    for the run (an MCC with one class predicted, an empty mean). An infinity is no such value: refused."""
    if isinstance(value, dict):
        return {name: _strict(item, f"{key}.{name}" if key else str(name)) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item, key) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        raise ValueError(f"metrics.json: '{key}' is {value}, which is no result; the run is not written")
    return value


def _replace_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            _write_all(handle, data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _write_all(handle, data: bytes) -> None:
    handle.write(data)


# ---------------------------------------------------------------------------------------- reading


def _run_dir(run: str | Path) -> Path:
    """A run folder, or any file in it, -> the folder."""
    run = Path(run)
    return run.parent if run.name in RUN_FILES else run


def _rerun_hint(path: Path) -> str:
    return f"rerun `crisp train` for this run (delete {path.parent} first if it keeps failing)"


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise RunFormatError(f"{path}: no such file; the run is missing or unfinished: {_rerun_hint(path)}.")


def _read_json(path: Path) -> dict:
    _require_file(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFormatError(
            f"{path} is not valid JSON ({error}); it was probably truncated: {_rerun_hint(path)}."
        ) from None
    if not isinstance(data, dict):
        raise RunFormatError(f"{path} holds a {type(data).__name__}, not a JSON object: {_rerun_hint(path)}.")
    return data


def _read_csv(path: Path, required: Iterable[str]):
    import pandas as pd

    _require_file(path)
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise RunFormatError(f"{path} cannot be read as CSV ({error}): {_rerun_hint(path)}.") from None
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise RunFormatError(
            f"{path} lacks column(s) {', '.join(missing)} (it has {', '.join(map(str, frame.columns))}): "
            f"{_rerun_hint(path)}."
        )
    return frame


def _lookup(metrics: dict, keys: tuple[str, ...], path: Path):
    value = metrics
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise RunFormatError(
                f"{path} has no key '{'.'.join(keys)}'; it was written by an older or interrupted run: "
                f"{_rerun_hint(path)}."
            )
        value = value[key]
    return value


def read_metrics(run: str | Path) -> dict:
    """metrics.json of a run folder, checked for every key runs.csv needs and for a consistent accuracy."""
    path = _run_dir(run) / METRICS_FILE
    metrics = _read_json(path)
    for keys in RUN_FIELDS.values():
        if keys is not None:
            _lookup(metrics, keys, path)
    for key in ("attention_entropy", "kept_fraction"):
        _lookup(metrics, ("diagnostics", key), path)
    for column in FINITE_FIELDS:
        keys = RUN_FIELDS[column]
        value = _lookup(metrics, keys, path)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RunFormatError(
                f"{path}: '{'.'.join(keys)}' is {value}, not a finite number: the run diverged, so it is no "
                f"result; rerun it with a lower learning rate (or delete {path.parent})."
            )
    validation = metrics["validation"]
    # Catches an accuracy written in percent, or correct/total from a different evaluation.
    if validation["total"] and abs(validation["accuracy"] - validation["correct"] / validation["total"]) > 1e-4:
        raise RunFormatError(
            f"{path}: validation.accuracy = {validation['accuracy']} disagrees with validation.correct / "
            f"validation.total = {validation['correct']}/{validation['total']}: {_rerun_hint(path)}."
        )
    return metrics


def read_history(run: str | Path):
    """history.csv of a run folder as a DataFrame with HISTORY_COLUMNS."""
    return _read_csv(_run_dir(run) / "history.csv", HISTORY_COLUMNS)


def read_predictions(run: str | Path):
    """predictions.csv of a run folder as a DataFrame indexed by example index, with columns label,
    prediction, probability and prob_0 .. prob_{K-1} (K >= 2)."""
    path = _run_dir(run) / "predictions.csv"
    frame = _read_csv(path, PREDICTION_COLUMNS)
    classes = sorted(int(column[len("prob_"):]) for column in frame.columns if column.startswith("prob_"))
    if len(classes) < 2 or classes != list(range(len(classes))):
        raise RunFormatError(
            f"{path} needs class probability columns prob_0 .. prob_{{K-1}} (K >= 2), found "
            f"{', '.join(f'prob_{k}' for k in classes) or 'none'}: {_rerun_hint(path)}."
        )
    repeated = frame["index"].duplicated()
    if repeated.any():
        first = frame["index"][repeated].iloc[0]
        raise RunFormatError(f"{path}: example index {first} appears twice: {_rerun_hint(path)}.")
    return frame.set_index("index")


def read_attention(run: str | Path) -> dict:
    """attention.json of a run folder, checked: one square matrix per layer, one row and column per token."""
    path = _run_dir(run) / "attention.json"
    attention = _read_json(path)
    for key in ATTENTION_KEYS:
        _lookup(attention, (key,), path)
    size = len(attention["tokens"])
    if not attention["layers"]:
        raise RunFormatError(f"{path} has an empty 'layers' list: {_rerun_hint(path)}.")
    for layer, matrix in enumerate(attention["layers"]):
        if len(matrix) != size or any(len(row) != size for row in matrix):
            raise RunFormatError(
                f"{path}: layer {layer} is not {size} x {size} (one row and column per token): {_rerun_hint(path)}."
            )
    return attention


# ---------------------------------------------------------------------------------------- runs.csv


def _mean(values) -> float:
    values = [value for value in values or [] if value is not None]
    return sum(values) / len(values) if values else math.nan


def run_row(metrics: dict) -> dict:
    """One flat row of runs.csv (RUN_COLUMNS) from a run's metrics (as read_metrics returns them)."""
    row = {}
    for column, keys in RUN_FIELDS.items():
        if keys is not None:
            value = metrics
            for key in keys:
                value = value[key]
            row[column] = value
    row["loss_gap"] = row["validation_loss"] - row["train_loss"]
    diagnostics = metrics.get("diagnostics") or {}
    row["attention_entropy_mean"] = _mean(diagnostics.get("attention_entropy"))
    row["kept_fraction_mean"] = _mean(diagnostics.get("kept_fraction"))
    sources = metrics.get("sources") or {}  # absent in runs written before sources were recorded
    for column in PROVENANCE_COLUMNS:
        row[column] = (sources.get(column.removesuffix("_revision")) or {}).get("revision")
    return {column: row[column] for column in RUN_COLUMNS}


def collect_runs(run_dirs: Iterable[str | Path]):
    """runs.csv as a DataFrame: one row per run, ordered by task, model, sparsity, experiment and seed."""
    import pandas as pd

    run_dirs = [_run_dir(run) for run in run_dirs]
    if not run_dirs:
        raise RunFormatError("No runs given: pass at least one run folder that holds a metrics.json.")
    table = pd.DataFrame([run_row(read_metrics(run)) for run in run_dirs], columns=RUN_COLUMNS)

    repeated = table.duplicated(list(RUN_IDENTITY), keep=False)
    if repeated.any():
        clashing = [str(run) for run, clash in zip(run_dirs, repeated) if clash]
        raise RunFormatError(
            f"The same (task, model, experiment, seed) appears in several run folders: {', '.join(clashing)}. "
            "Pass each run once."
        )
    for (task, model, experiment), group in table.groupby(["task", "model", "experiment"]):
        settings = set(zip(group["pattern"], group["sparsity"].astype(str), group["apply"].astype(str)))
        if len(settings) > 1:
            raise RunFormatError(
                f"Runs of experiment '{experiment}' ({task}, {model}) disagree on pattern/sparsity/apply "
                f"({sorted(settings)}): results of an older configuration are mixed in. Delete the stale run "
                "folders or give the experiment a new name."
            )
    table["sparsity"] = table["sparsity"].astype(float)  # null (adaptive normalisers) -> NaN
    return table.sort_values(["task", "model", "sparsity", "experiment", "seed"], ignore_index=True, na_position="last")
