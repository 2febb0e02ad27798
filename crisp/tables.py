"""Aggregate finished runs and FLOPs results into the tables of the report.

    runs.csv       one row per (experiment, seed), read from each run's metrics.json
    summary.csv    one row per experiment: mean and sample std over seeds, and the difference
                   in accuracy to the baseline with two exact tests
    summary.md     the summary for people (GitHub markdown), with a note on seeds and tests
    summary.tex    the summary for a paper (LaTeX, booktabs)
    flops.csv      FLOPs per encoder layer, long format (rows from crisp.flops.flops_rows)
    flops.md       FLOP reduction in % per experiment and sequence length, three views

Accuracies are fractions (0-1) in the CSV files, as in metrics.json; the markdown and LaTeX
tables show percent. `write_tables` is the entry point of `crisp tables`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from crisp.errors import ConfigError, DataError

BASELINE = "dense_baseline"

# What arXiv 2508.06016 reports: (experiment, attention sparsity, validation accuracy in %).
# Both numbers are k/832 (754 and 762), not k/872: the paper's evaluation dropped the last
# incomplete batch of the 872 SST-2 validation examples. Shown next to our results, never used
# in a computation.
PAPER_REPORTED = (("dense_baseline", 0.0, 90.62), ("aggressive_sparse", 0.8, 91.59))
PAPER_EXAMPLES = 832
SST2_VALIDATION_EXAMPLES = 872

# runs.csv column -> key path in metrics.json
RUN_FIELDS = {
    "experiment": ("experiment",),
    "seed": ("seed",),
    "model": ("model",),
    "dataset": ("dataset",),
    "pattern": ("pattern",),
    "sparsity": ("sparsity",),
    "validation_accuracy": ("validation", "accuracy"),
    "correct": ("validation", "correct"),
    "total": ("validation", "total"),
    "validation_loss": ("validation", "loss"),
    "train_loss": ("train_loss",),
    "steps": ("steps",),
    "epochs": ("epochs",),
    "wall_time_s": ("wall_time_s",),
    "examples_per_s": ("train_examples_per_s",),
}
RUN_COLUMNS = [
    "experiment", "seed", "model", "dataset", "pattern", "sparsity",
    "validation_accuracy", "correct", "total", "validation_loss", "train_loss",
    "loss_gap",  # validation loss - final train loss: the generalisation gap
    "steps", "epochs", "wall_time_s", "examples_per_s",
]

SUMMARY_METRICS = ("validation_accuracy", "validation_loss", "train_loss", "loss_gap", "examples_per_s")
SUMMARY_COLUMNS = [
    "experiment", "pattern", "sparsity", "n_seeds", "seeds",
    *[f"{metric}_{stat}" for metric in SUMMARY_METRICS for stat in ("mean", "std")],
    "baseline", "paired_seeds", "delta_accuracy_mean", "paired_test", "paired_p_value",
    # McNemar on per-example predictions pooled over seeds: "gained" = the baseline was wrong
    # and this experiment right on the same example and seed; "lost" = the reverse.
    "mcnemar_seeds", "mcnemar_examples", "mcnemar_gained", "mcnemar_lost", "mcnemar_p_value",
]

FLOPS_VIEWS = {
    "as_executed": "As executed, whole layer (%)",
    "ideal_sparse": "Ideal sparse kernel, whole layer (%)",
    "paper_accounting": "Paper accounting, attention sub-layer (%)",
}

# Exact enumeration of 2**n sign assignments stays small (about 20 MB) up to this many seeds.
EXACT_SIGN_FLIP_MAX_SEEDS = 20
MONTE_CARLO_SIGN_FLIPS = 2**20


# ---------------------------------------------------------------- runs.csv


def metrics_path(run: str | Path) -> Path:
    """A run folder or its metrics.json -> the metrics.json path."""
    run = Path(run)
    return run / "metrics.json" if run.is_dir() else run


def read_run(run: str | Path) -> dict:
    """One row of runs.csv from a run folder (or its metrics.json)."""
    path = metrics_path(run)
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no such file. Pass finished run folders (results/runs/<experiment>/seed<seed>/); "
            "`crisp train` writes metrics.json when a run ends."
        ) from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error}); the run was probably interrupted: rerun it.") from None

    row = {}
    for column, keys in RUN_FIELDS.items():
        value = metrics
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                raise DataError(
                    f"{path} has no key '{'.'.join(keys)}' (needed for column '{column}' of runs.csv). "
                    "It was written by an older or interrupted run: rerun `crisp train` for this experiment and seed."
                )
            value = value[key]
        row[column] = value

    # Catches an accuracy written in percent, or correct/total from a different evaluation.
    if row["total"] and abs(row["validation_accuracy"] - row["correct"] / row["total"]) > 1e-4:
        raise DataError(
            f"{path}: validation.accuracy = {row['validation_accuracy']} disagrees with "
            f"validation.correct / validation.total = {row['correct']}/{row['total']}; "
            "accuracy must be the fraction of correct examples (0-1)."
        )
    row["loss_gap"] = row["validation_loss"] - row["train_loss"]
    return row


def experiment_order(table: pd.DataFrame) -> list[str]:
    """Experiment names ordered by sparsity, then name (dense first)."""
    first = table.drop_duplicates("experiment")
    return first.sort_values(["sparsity", "experiment"])["experiment"].tolist()


def collect_runs(runs: Iterable[str | Path]) -> pd.DataFrame:
    """runs.csv: one row per (experiment, seed), ordered by sparsity, experiment and seed."""
    paths = [metrics_path(run) for run in runs]
    if not paths:
        raise DataError("No runs given: pass at least one run folder that holds a metrics.json.")
    table = pd.DataFrame([read_run(path) for path in paths], columns=RUN_COLUMNS)

    repeated = table.duplicated(["experiment", "seed"], keep=False)
    if repeated.any():
        clashing = [str(path) for path, clash in zip(paths, repeated) if clash]
        raise DataError(f"The same (experiment, seed) appears in several runs: {', '.join(clashing)}. Pass each run once.")
    for experiment, group in table.groupby("experiment"):
        if group["sparsity"].nunique() > 1 or group["pattern"].nunique() > 1:
            raise DataError(
                f"Runs of experiment '{experiment}' disagree on pattern/sparsity "
                f"({sorted(set(zip(group['pattern'], group['sparsity'])))}): results of an older configuration "
                "are mixed in. Delete the stale run folders or give the experiment a new name."
            )

    table["sparsity"] = table["sparsity"].astype(float)
    table = table.sort_values(["sparsity", "experiment", "seed"], ignore_index=True)
    return table


# ---------------------------------------------------------------- statistics


def sign_flip_test(differences: Iterable[float]) -> tuple[float, str]:
    """Two-sided paired permutation test of 'mean difference = 0' -> (p-value, test name).

    Under the null hypothesis each seed's difference is as likely to have had the opposite sign,
    so the p-value is the share of the 2**n sign assignments whose |sum| reaches the observed
    |sum|. With n seeds the smallest possible p-value is 2 / 2**n (0.25 for 3 seeds).
    """
    differences = np.asarray(list(differences), dtype=float)
    n = len(differences)
    if n == 0:
        raise ValueError("sign_flip_test needs at least one paired difference.")
    if n <= EXACT_SIGN_FLIP_MAX_SEEDS:
        # Row i holds the binary digits of i mapped to +1/-1: every assignment exactly once.
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        signs = 1 - 2 * bits.astype(np.int8)
        name = f"exact sign-flip permutation, n={n}"
    else:
        signs = np.random.default_rng(0).choice(np.array([-1, 1], dtype=np.int8), size=(MONTE_CARLO_SIGN_FLIPS, n))
        name = f"Monte Carlo sign-flip permutation ({MONTE_CARLO_SIGN_FLIPS} draws), n={n}"
    flipped = np.abs(signs @ differences)
    observed = abs(differences.sum())
    # Floating-point sums in another order may differ in the last bits from the observed one.
    tolerance = 1e-9 * max(np.abs(differences).sum(), 1e-300)
    return float(np.mean(flipped >= observed - tolerance)), name


def mcnemar_exact_p_value(gained: int, lost: int) -> float:
    """Two-sided exact McNemar test: binomial(gained + lost, 1/2) tail, doubled, at most 1."""
    discordant = gained + lost
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, i) for i in range(min(gained, lost) + 1))
    return min(1.0, 2 * tail / 2**discordant)


def read_predictions(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """predictions.csv (index, label, prediction, probability) -> frame indexed by example index."""
    where = "predictions" if isinstance(source, pd.DataFrame) else str(source)
    frame = source if isinstance(source, pd.DataFrame) else pd.read_csv(source)
    missing = {"index", "label", "prediction"} - set(frame.columns)
    if missing:
        raise DataError(f"{where} lacks column(s) {sorted(missing)}; expected index, label, prediction, probability.")
    if frame["index"].duplicated().any():
        raise DataError(f"{where}: example index {frame['index'][frame['index'].duplicated()].iloc[0]} appears twice.")
    return frame.set_index("index")[["label", "prediction"]]


def paired_outcomes(baseline: pd.DataFrame, experiment: pd.DataFrame, where: str) -> tuple[int, int, int]:
    """(gained, lost, examples) for two runs' predictions of the same validation examples."""
    if set(baseline.index) != set(experiment.index):
        raise DataError(f"{where}: the two runs predicted different validation examples; pair only runs of one dataset.")
    experiment = experiment.loc[baseline.index]
    if not (baseline["label"] == experiment["label"]).all():
        raise DataError(f"{where}: the same example index has different labels; the runs used different validation data.")
    baseline_right = baseline["prediction"] == baseline["label"]
    experiment_right = experiment["prediction"] == experiment["label"]
    gained = int((~baseline_right & experiment_right).sum())
    lost = int((baseline_right & ~experiment_right).sum())
    return gained, lost, len(baseline)


def compare_to_baseline(
    group: pd.DataFrame, baseline_runs: pd.DataFrame, baseline: str, predictions: Mapping
) -> dict:
    """Delta accuracy, sign-flip test over seeds and pooled McNemar for one experiment's runs."""
    experiment = group["experiment"].iloc[0]
    result = {"baseline": baseline}
    if experiment == baseline:
        result["paired_test"] = "baseline"
        return result

    baseline_accuracy = baseline_runs.set_index("seed")["validation_accuracy"]
    accuracy = group.set_index("seed")["validation_accuracy"]
    seeds = sorted(set(accuracy.index) & set(baseline_accuracy.index))
    result["paired_seeds"] = len(seeds)
    if not seeds:
        result["paired_test"] = f"no seed shared with {baseline}"
        return result
    differences = (accuracy.loc[seeds] - baseline_accuracy.loc[seeds]).to_numpy()
    result["delta_accuracy_mean"] = differences.mean()
    result["paired_p_value"], result["paired_test"] = sign_flip_test(differences)

    # McNemar pools every (seed, example) pair; it ignores that seeds share examples, so read
    # it as a per-example view next to the seed-level test, not as a replacement.
    paired = [seed for seed in seeds if (experiment, seed) in predictions and (baseline, seed) in predictions]
    if paired:
        counts = [
            paired_outcomes(
                predictions[(baseline, seed)], predictions[(experiment, seed)], f"predictions of {experiment} vs {baseline}, seed {seed}"
            )
            for seed in paired
        ]
        gained, lost, examples = (sum(column) for column in zip(*counts))
        result.update(
            mcnemar_seeds=len(paired), mcnemar_examples=examples, mcnemar_gained=gained, mcnemar_lost=lost,
            mcnemar_p_value=mcnemar_exact_p_value(gained, lost),
        )
    return result


def summarize(
    runs: pd.DataFrame,
    baseline: str = BASELINE,
    predictions: Mapping[tuple[str, int], str | Path | pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """summary.csv: one row per experiment (by sparsity) from the rows of runs.csv.

    Means and sample standard deviations (ddof=1) over seeds; the std is NaN (blank in the CSV)
    for a single seed. `predictions` maps (experiment, seed) to a predictions.csv path or frame;
    when given for both sides of a seed, an exact McNemar test is added.
    """
    if baseline not in set(runs["experiment"]):
        raise ConfigError(
            f"Baseline experiment '{baseline}' is not among the runs ({', '.join(experiment_order(runs))}); "
            "name one of these as baseline."
        )
    predictions = {key: read_predictions(value) for key, value in (predictions or {}).items()}
    baseline_runs = runs[runs["experiment"] == baseline]

    rows = []
    for experiment in experiment_order(runs):
        group = runs[runs["experiment"] == experiment]
        row = {
            "experiment": experiment,
            "pattern": group["pattern"].iloc[0],
            "sparsity": group["sparsity"].iloc[0],
            "n_seeds": len(group),
            "seeds": " ".join(str(seed) for seed in sorted(group["seed"])),
        }
        for metric in SUMMARY_METRICS:
            row[f"{metric}_mean"] = group[metric].mean()
            row[f"{metric}_std"] = group[metric].std(ddof=1)  # NaN for one seed, never a fake 0
        row.update(compare_to_baseline(group, baseline_runs, baseline, predictions))
        rows.append(row)
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    # Counts stay integers (blank, not NaN-forced floats, where a test does not apply).
    counts = ["n_seeds", "paired_seeds", "mcnemar_seeds", "mcnemar_examples", "mcnemar_gained", "mcnemar_lost"]
    return summary.astype({column: "Int64" for column in counts})


def default_baseline(runs: pd.DataFrame) -> str:
    """dense_baseline when present, else the experiment with the lowest sparsity."""
    return BASELINE if BASELINE in set(runs["experiment"]) else experiment_order(runs)[0]


# ---------------------------------------------------------------- summary.md / summary.tex


def mean_std(mean: float, std: float, scale: float = 1.0, digits: int = 2) -> str:
    """'91.21 ± 0.34'; the mean alone when std is NaN (one seed); '' when there is no mean."""
    if pd.isna(mean):
        return ""
    if pd.isna(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def p_value_text(p: float) -> str:
    return "" if pd.isna(p) else f"{p:.3g}"


def summary_display(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as strings with readable headers, shared by markdown and LaTeX."""
    rows = []
    for row in summary.itertuples(index=False):
        rows.append({
            "Experiment": row.experiment,
            "Pattern": row.pattern,
            "Sparsity (%)": f"{row.sparsity * 100:.0f}",
            "Seeds": str(row.n_seeds),
            "Accuracy (%)": mean_std(row.validation_accuracy_mean, row.validation_accuracy_std, 100),
            "Δ accuracy (pt)": "" if pd.isna(row.delta_accuracy_mean) else f"{row.delta_accuracy_mean * 100:+.2f}",
            "p (paired seeds)": p_value_text(row.paired_p_value),
            "p (McNemar)": p_value_text(row.mcnemar_p_value),
            "Validation loss": mean_std(row.validation_loss_mean, row.validation_loss_std, digits=3),
            "Final train loss": mean_std(row.train_loss_mean, row.train_loss_std, digits=3),
            "Loss gap": mean_std(row.loss_gap_mean, row.loss_gap_std, digits=3),
            "Train examples/s": mean_std(row.examples_per_s_mean, row.examples_per_s_std, digits=1),
        })
    return pd.DataFrame(rows)


def summary_note(runs: pd.DataFrame, summary: pd.DataFrame) -> str:
    """One paragraph: seeds, what ± means, the tests used, and the paper's numbers for reference."""
    baseline = summary["baseline"].iloc[0]
    seeds = ", ".join(str(seed) for seed in sorted(runs["seed"].unique()))
    totals = sorted(runs["total"].unique())
    examples = " or ".join(str(total) for total in totals)
    counts = sorted(summary["n_seeds"].unique())
    per_experiment = f"{counts[0]} per experiment" if len(counts) == 1 else "see the Seeds column"
    dense, aggressive = PAPER_REPORTED
    return (
        f"Seeds {seeds} ({per_experiment}); accuracy and losses are mean ± sample standard deviation "
        f"over seeds (no ± with a single seed), on {examples} validation examples. "
        f"Δ accuracy is the mean of seed-paired differences to {baseline}; "
        "p (paired seeds) is a two-sided exact sign-flip permutation test on those differences "
        "(with n seeds the smallest possible p is 2/2^n); "
        "p (McNemar) is a two-sided exact McNemar test on per-example predictions pooled over seeds. "
        "Loss gap = validation loss − final train loss. "
        f"For reference, the paper reports {aggressive[2]:.2f} % ({aggressive[0]}) vs {dense[2]:.2f} % ({dense[0]}) "
        f"on {PAPER_EXAMPLES} of the {SST2_VALIDATION_EXAMPLES} SST-2 validation examples, with one run each."
    )


def write_summary_markdown(summary: pd.DataFrame, runs: pd.DataFrame, path: Path) -> None:
    # disable_numparse keeps "+0.50" and "91.20" as written instead of reformatting them.
    table = summary_display(summary).to_markdown(index=False, disable_numparse=True)
    path.write_text(f"# Validation results\n\n{table}\n\n{summary_note(runs, summary)}\n")


def latex_escape(text: str) -> str:
    for character in "&%$#_{}":
        text = text.replace(character, "\\" + character)
    return text.replace("^", r"\^{}")


def write_summary_latex(summary: pd.DataFrame, runs: pd.DataFrame, path: Path) -> None:
    display = summary_display(summary)
    styler = display.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    latex = styler.to_latex(
        hrules=True,  # booktabs rules
        caption=latex_escape(summary_note(runs, summary)),
        label="tab:summary",
        position_float="centering",
        column_format="ll" + "r" * (display.shape[1] - 2),
    )
    # Plain ASCII LaTeX so that pdflatex compiles it without extra packages.
    latex = latex.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("−", "$-$")
    path.write_text(latex)


# ---------------------------------------------------------------- flops.csv / flops.md


def load_flops_rows(flops_paths: Iterable[str | Path]) -> pd.DataFrame:
    """The long FLOPs table from results/flops/<experiment>.json files."""
    from crisp.flops import ROW_COLUMNS, flops_rows  # imported here so the run tables need no FLOPs module

    frames = []
    for path in flops_paths:
        try:
            report = json.loads(Path(path).read_text())
        except (FileNotFoundError, json.JSONDecodeError) as error:
            raise DataError(f"{path}: cannot read the FLOPs result ({error}); rerun `crisp profile` for it.") from None
        frames.append(pd.DataFrame(flops_rows(report)))
    if not frames:
        return pd.DataFrame(columns=list(ROW_COLUMNS))
    flops = pd.concat(frames, ignore_index=True)
    missing = set(ROW_COLUMNS) - set(flops.columns)
    if missing:
        raise ValueError(f"crisp.flops.flops_rows returned rows without column(s) {sorted(missing)}.")
    return flops[list(ROW_COLUMNS)]


def flops_reductions(flops: pd.DataFrame) -> pd.DataFrame:
    """Forward-pass reduction of the 'total' component, one column per view, in %."""
    totals = flops[(flops["component"] == "total") & (flops["pass"] == "forward")]
    table = totals.pivot_table(index=["experiment", "sparsity", "seq_len"], columns="view", values="reduction", aggfunc="first")
    table = table.reindex(columns=list(FLOPS_VIEWS)) * 100
    order = {name: position for position, name in enumerate(experiment_order(totals))}
    table = table.reset_index()
    table["position"] = table["experiment"].map(order)
    return table.sort_values(["position", "seq_len"]).drop(columns="position").reset_index(drop=True)


def write_flops_markdown(flops: pd.DataFrame, path: Path) -> None:
    if flops.empty:
        path.write_text("# FLOPs per encoder layer\n\nNo FLOPs results were given.\n")
        return
    reductions = flops_reductions(flops)
    display = pd.DataFrame({
        "Experiment": reductions["experiment"],
        "Sparsity (%)": (reductions["sparsity"] * 100).map("{:.0f}".format),
        "n (tokens)": reductions["seq_len"].astype(int).astype(str),
        **{label: reductions[view].map(lambda value: "" if pd.isna(value) else f"{value:.1f}") for view, label in FLOPS_VIEWS.items()},
    })
    note = (
        "Reduction of forward-pass FLOPs per encoder layer and sequence, relative to dense attention. "
        "As executed: what a top-k mask really computes (the full QKᵀ is needed to choose the keys). "
        "Ideal sparse kernel: scores, softmax and attention·V computed only for the kept keys. "
        "Paper accounting: the attention sub-layer alone, feed-forward network excluded."
    )
    table = display.to_markdown(index=False, disable_numparse=True)
    path.write_text(f"# FLOPs per encoder layer\n\n{table}\n\n{note}\n")


# ---------------------------------------------------------------- entry point


def write_tables(
    run_dirs: Iterable[str | Path],
    flops_paths: Iterable[str | Path],
    out_dir: str | Path,
    baseline: str | None = None,
) -> dict[str, Path]:
    """Write runs.csv, summary.{csv,md,tex} and flops.{csv,md} into out_dir; return their paths.

    baseline: the experiment others are compared with; None = dense_baseline when present,
    else the lowest-sparsity experiment.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dirs = [metrics_path(run).parent for run in run_dirs]

    runs = collect_runs(run_dirs)
    predictions = {}
    for run_dir in run_dirs:
        if (run_dir / "predictions.csv").exists():
            run = read_run(run_dir)
            predictions[(run["experiment"], run["seed"])] = run_dir / "predictions.csv"
    summary = summarize(runs, baseline or default_baseline(runs), predictions)
    flops = load_flops_rows(list(flops_paths))

    paths = {name: out_dir / name for name in ("runs.csv", "summary.csv", "summary.md", "summary.tex", "flops.csv", "flops.md")}
    runs.to_csv(paths["runs.csv"], index=False)
    summary.to_csv(paths["summary.csv"], index=False)
    write_summary_markdown(summary, runs, paths["summary.md"])
    write_summary_latex(summary, runs, paths["summary.tex"])
    flops.to_csv(paths["flops.csv"], index=False)
    write_flops_markdown(flops, paths["flops.md"])
    return paths
