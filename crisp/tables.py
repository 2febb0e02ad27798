"""Shape finished runs and FLOPs reports into the tables of the report.

    runs.csv       one row per run (task, model, experiment, seed): crisp.runs.collect_runs
    summary.csv    one row per (task, model, experiment): mean and sample std over seeds of the task's
                   primary metric and the diagnostics, and the comparison with the baseline of the
                   same task and model over their shared seeds (paired t-test with Holm's correction
                   per task x model and BH across the run, sign-flip test, bootstrap interval from
                   test-set sampling, McNemar per seed, detectable difference, seeds needed)
    summary.md     the summary for people (GitHub markdown), with a note saying which differences are
                   significant
    summary.tex    a compact summary for a paper (LaTeX, booktabs)
    pooled.csv/md  per experiment, a random-effects meta-analysis over (task, model) groups (crisp.pooling)
    flops.csv      FLOPs per encoder layer, long format, one block per (model, experiment)
    flops.md       FLOP reduction in % per model, experiment and sequence length, three views

Reading run folders belongs to crisp.runs, the comparisons to crisp.comparisons, the statistics to
crisp.stats and crisp.pooling and the metrics to crisp.metrics; this module only arranges their
results. Metrics are fractions (0-1) in the CSV files, as in metrics.json; the markdown and LaTeX
tables show them x 100 (points). `write_tables` is the entry point of `crisp tables`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from crisp import stats
from crisp.comparisons import add_verdicts, compare_to_baseline, shared_seeds
from crisp.errors import ConfigError, RunFormatError
from crisp.layout import TABLES
from crisp.metrics import CALIBRATION_BINS, metric_label, primary_metric
from crisp.pooling import pooled_effects, write_pooled_markdown
from crisp.runs import PROVENANCE_COLUMNS, collect_runs, read_metrics, read_predictions, run_row

# What arXiv 2508.06016 reports for DistilBERT on GLUE SST-2: (experiment, attention sparsity,
# validation accuracy in %). Both numbers are k/832 (754 and 762), not k/872: the paper's evaluation
# dropped the last incomplete batch of the 872 SST-2 validation examples. Shown next to our results
# where they apply (see paper_applies), never used in a computation.
PAPER_REPORTED = (("dense_baseline", 0.0, 90.62), ("aggressive_sparse", 0.8, 91.59))
PAPER_EXAMPLES = 832
SST2_VALIDATION_EXAMPLES = 872
PAPER_DATASET = "glue/sst2"
PAPER_MODEL = "distilbert-base-uncased"

# summary metric -> how one run's value is read from its metrics.json (the format of crisp.runs).
# runs.csv columns (crisp.runs.run_row) under the names the summary gives them.
RUN_ROW_NAMES = {
    "validation_accuracy": "accuracy",
    "attention_entropy_mean": "attention_entropy",
    "kept_fraction_mean": "kept_fraction",
}
# "primary" is the task's primary metric, recomputed from predictions.csv with crisp.metrics.
SUMMARY_METRICS = (
    "primary",
    "accuracy",
    "validation_loss",
    "train_loss",
    "loss_gap",
    "nll",
    "ece",
    "brier",
    "attention_entropy",
    "kept_fraction",
    "examples_per_s",
    "achieved_flops_per_s",
    "mfu",
)
IDENTITY_COLUMNS = [
    "task",
    "dataset",
    "model",
    "model_slug",
    "experiment",
    "pattern",
    "sparsity",
    "apply",
    "attention_dropout",
]
COMPARISON_COLUMNS = [
    "baseline",
    # Every number of a comparison, the experiment's means and stds included, comes from the seeds
    # that both arms share; seeds of either arm without a partner are listed, not used.
    "paired_seeds",
    "seed_sets_differ",
    "unpaired_seeds",
    "baseline_primary_mean",
    # The verdict: paired t-test on the per-seed differences of the primary metric (df = paired_seeds - 1),
    # its interval, Holm's correction within the family (one task x model), and a BH q over the whole run.
    "delta_primary_mean",
    "delta_primary_std",
    "delta_primary_low",
    "delta_primary_high",
    "confidence",
    "paired_test",
    "t_statistic",
    "t_df",
    "t_p_value",
    "family",
    "family_size",
    "holm_p_value",
    "bh_q_value",
    "significant",
    # Exact sign-flip permutation test over the same seed-paired differences (Monte Carlo beyond 20 seeds).
    "sign_flip_test",
    "sign_flip_p_value",
    "sign_flip_min_p",
    # Test-set sampling, given the trained models: paired bootstrap over validation examples, seeds matched.
    "sampling_low",
    "sampling_high",
    "bootstrap_resamples",
    "bootstrap_seed",
    # One exact McNemar test per paired seed (that seed's two models), never pooled over seeds: "gained" =
    # the baseline wrong and the experiment right on an example, "lost" the reverse, per seed.
    "validation_examples",
    "mcnemar_gained_per_seed",
    "mcnemar_lost_per_seed",
    "mcnemar_rejecting_seeds",
    "mcnemar_p_min",
    "mcnemar_p_max",
    # The design: what the paired t-test detects with these seeds' spread, and the seeds it would need
    # for target_difference, both at level alpha / family_size (Holm's strictest step) and this power.
    "minimum_detectable_difference",
    "power",
    "target_difference",
    "seeds_needed",
]
SUMMARY_COLUMNS = [
    *IDENTITY_COLUMNS,
    "n_seeds",
    "seeds",
    "metric",
    "measured_sparsity",
    *[f"{metric}_{stat}" for metric in SUMMARY_METRICS for stat in ("mean", "std")],
    *COMPARISON_COLUMNS,
    *PROVENANCE_COLUMNS,
]
COUNT_COLUMNS = [
    "n_seeds",
    "paired_seeds",
    "t_df",
    "family_size",
    "validation_examples",
    "mcnemar_rejecting_seeds",
    "bootstrap_resamples",
    "bootstrap_seed",
]
BOOLEAN_COLUMNS = ["seed_sets_differ", "significant"]

FLOPS_VIEWS = {
    "as_executed": "As executed, whole layer (%)",
    "ideal_sparse": "Ideal sparse kernel, whole layer (%)",
    "paper_accounting": "Paper accounting, attention sub-layer (%)",
}


def paper_applies(dataset: str, model: str) -> bool:
    """The paper's numbers are comparable only for DistilBERT (uncased) on GLUE SST-2."""
    return dataset == PAPER_DATASET and model == PAPER_MODEL


# ---------------------------------------------------------------- reading runs


def load_runs(run_dirs: Iterable[str | Path], settings: dict) -> tuple[pd.DataFrame, dict]:
    """Per-run values for the summary, and each run's predictions by (task, model_slug, experiment, seed).

    The primary metric is recomputed from predictions.csv with crisp.metrics.primary_metric and must
    agree with metrics.json: both come from the same validation pass.
    """
    rows, predictions, folders = [], {}, {}
    for run_dir in map(Path, run_dirs):
        metrics = read_metrics(run_dir)
        frame = read_predictions(run_dir)  # indexed by example index
        task = metrics["task"]
        metric = settings["tasks"].get(task, {}).get("metric", metrics["metric"])
        classes = sum(column.startswith("prob_") for column in frame.columns)
        primary = primary_metric(metric, frame["label"].to_numpy(), frame["prediction"].to_numpy(), classes)
        recorded = (metrics.get("validation") or {}).get("primary")
        if recorded is not None and abs(recorded - primary) > 1e-4:
            raise RunFormatError(
                f"{run_dir / 'predictions.csv'} gives {metric} = {primary:.6f} but {run_dir / 'metrics.json'} records "
                f"validation.primary = {recorded:.6f}: the files come from different runs. Rerun `crisp train` for it."
            )
        key = (task, metrics["model_slug"], metrics["experiment"], int(metrics["seed"]))
        if key in folders:
            raise RunFormatError(f"{folders[key]} and {run_dir} are the same run {key}; pass each run folder once.")
        folders[key] = run_dir
        row = {RUN_ROW_NAMES.get(column, column): value for column, value in run_row(metrics).items()}
        row.update(
            dataset=settings["tasks"].get(task, {}).get("name", metrics.get("dataset")),
            seed=int(metrics["seed"]),
            metric=metric,
            primary=primary,
        )
        rows.append(row)
        predictions[key] = frame
    if not rows:
        raise RunFormatError("No runs given: pass at least one run folder that holds metrics.json.")
    runs = pd.DataFrame(rows)
    # null in metrics.json (sparsity of adaptive patterns, mfu off CUDA) is NaN here
    for column in ("sparsity", *SUMMARY_METRICS):
        runs[column] = pd.to_numeric(runs[column], errors="coerce")
    return runs, predictions


def experiment_order(runs: pd.DataFrame, baseline: str) -> list[str]:
    """The baseline first, then by sparsity and name; adaptive patterns (no sparsity set) last."""
    first = runs.drop_duplicates("experiment").assign(not_baseline=lambda frame: frame["experiment"] != baseline)
    ordered = first.sort_values(["not_baseline", "sparsity", "experiment"], na_position="last")
    return ordered["experiment"].tolist()


def summarize(runs: pd.DataFrame, predictions: dict, settings: dict) -> pd.DataFrame:
    """summary.csv: one row per (task, model, experiment); comparisons stay within a task and model.

    An experiment compared with its baseline is summarised over the seeds the two share, so that its
    means, stds, difference and tests describe the same runs; the baseline's row uses all its seeds.
    """
    baseline = settings["baseline"]
    statistics = settings["statistics"]
    if baseline not in set(runs["experiment"]):
        raise ConfigError(
            f"baseline: experiment '{baseline}' is not among the runs ({', '.join(sorted(set(runs['experiment'])))}); "
            "name one of these as baseline in the configuration."
        )
    rows = []
    for (task, model_slug), pair in runs.groupby(["task", "model_slug"], sort=False):
        baseline_runs = pair[pair["experiment"] == baseline]
        for experiment in experiment_order(pair, baseline):
            group = pair[pair["experiment"] == experiment]
            first = group.iloc[0]
            row = {column: first[column] for column in IDENTITY_COLUMNS}
            comparison = {}
            if experiment == baseline:
                comparison = {"baseline": baseline, "paired_test": "baseline"}
            elif baseline_runs.empty:
                comparison = {"baseline": baseline, "paired_test": f"no {baseline} runs for {task} / {first['model']}"}
            else:
                comparison = compare_to_baseline(group, baseline_runs, predictions, statistics)
                if comparison["paired_seeds"]:
                    group = group[group["seed"].isin(shared_seeds(group, baseline_runs))]
            row.update(n_seeds=len(group), seeds=" ".join(map(str, sorted(group["seed"]))), metric=first["metric"])
            for metric in SUMMARY_METRICS:
                row[f"{metric}_mean"] = group[metric].mean()
                row[f"{metric}_std"] = group[metric].std(ddof=1)  # NaN for one seed, never a fake 0
            row["measured_sparsity"] = 1 - row["kept_fraction_mean"]
            row.update(comparison)
            row.update(revisions(group))
            rows.append(row)
    summary = add_verdicts(pd.DataFrame(rows, columns=SUMMARY_COLUMNS), statistics)
    # Counts stay integers (blank, not NaN-forced floats, where a test does not apply).
    return summary.astype({column: "Int64" for column in COUNT_COLUMNS} | dict.fromkeys(BOOLEAN_COLUMNS, "boolean"))


# ---------------------------------------------------------------- summary.md / summary.tex


def revisions(group: pd.DataFrame) -> dict:
    """The Hub commits a group's runs were made from (several, space-separated, if its seeds differ)."""
    return {
        column: " ".join(sorted({str(value) for value in group[column] if isinstance(value, str)})) or None
        for column in PROVENANCE_COLUMNS
    }


def inputs_sentence(summary: pd.DataFrame) -> str:
    """Which commit of each Hub model and data set the results come from (empty when none is from the Hub)."""
    inputs = {}
    for row in summary.itertuples():
        if row.model_revision:
            inputs[row.model] = row.model_revision
        if row.dataset_revision:
            inputs[row.dataset] = row.dataset_revision
    if not inputs:
        return ""
    return " Inputs (Hub commits): " + "; ".join(f"{name} at {commit}" for name, commit in inputs.items()) + "."


def mean_std(mean: float, std: float, scale: float = 1.0, digits: int = 2) -> str:
    """'91.21 ± 0.34'; the mean alone when std is NaN (one seed); '' when there is no mean."""
    if pd.isna(mean):
        return ""
    if pd.isna(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def p_value_text(p: float) -> str:
    return "" if pd.isna(p) else f"{p:.3g}"


def interval_text(mean: float, low: float, high: float) -> str:
    """'+1.20 [+0.35, +2.05]' in points (x 100); the mean alone without an interval."""
    if pd.isna(mean):
        return ""
    if pd.isna(low):
        return f"{mean * 100:+.2f}"
    return f"{mean * 100:+.2f} [{low * 100:+.2f}, {high * 100:+.2f}]"


def sparsity_text(row) -> str:
    """The configured sparsity in %; adaptive patterns set none."""
    return f"{row.sparsity * 100:.0f}" if pd.notna(row.sparsity) else "adaptive"


def measured_text(row) -> str:
    """Sparsity measured on the validation set, 1 - kept fraction, in %."""
    return "" if pd.isna(row.measured_sparsity) else f"{row.measured_sparsity * 100:.1f}"


def seeds_text(row) -> str:
    """The seeds the row's numbers use; '5†' when the experiment's and its baseline's seed sets differ."""
    return f"{row.n_seeds}{'†' if row.seed_sets_differ is True else ''}"


def mcnemar_text(row) -> str:
    """'2 of 5 (p 0.003–0.41)': seeds whose own exact McNemar test rejects, and the p range."""
    if pd.isna(row.mcnemar_rejecting_seeds):
        return ""
    spread = p_value_text(row.mcnemar_p_min)
    if row.mcnemar_p_max != row.mcnemar_p_min:
        spread += f"–{p_value_text(row.mcnemar_p_max)}"
    return f"{row.mcnemar_rejecting_seeds} of {row.paired_seeds} (p {spread})"


def points_text(value: float) -> str:
    return "" if pd.isna(value) else f"{value * 100:.2f}"


def verdict_text(row) -> str:
    return "" if pd.isna(row.significant) else ("yes" if row.significant else "no")


def summary_display(summary: pd.DataFrame, compact: bool = False) -> pd.DataFrame:
    """The summary as strings with readable headers; compact (for LaTeX) keeps the main columns."""
    target = summary["target_difference"].dropna()
    seeds_header = f"Seeds for {target.iloc[0]:g} pt" if len(target) else "Seeds needed"
    rows = []
    for row in summary.itertuples(index=False):
        display = {
            "Task": row.task,
            "Model": row.model,
            "Experiment": row.experiment,
            "Sparsity set (%)": sparsity_text(row),
            "Sparsity measured (%)": measured_text(row),
            "Seeds": seeds_text(row),
            "Metric": metric_label(row.metric),
            "Primary (×100)": mean_std(row.primary_mean, row.primary_std, 100),
            "Δ primary [CI] (pt)": interval_text(row.delta_primary_mean, row.delta_primary_low, row.delta_primary_high),
            "p (t)": p_value_text(row.t_p_value),
            "p (Holm)": p_value_text(row.holm_p_value),
            "q (BH)": p_value_text(row.bh_q_value),
            "Significant": verdict_text(row),
            "p (sign-flip)": p_value_text(row.sign_flip_p_value),
            "Δ CI, test-set sampling (pt)": ""
            if pd.isna(row.sampling_low)
            else f"[{row.sampling_low * 100:+.2f}, {row.sampling_high * 100:+.2f}]",
            "McNemar per seed, rejecting": mcnemar_text(row),
            "MDD (pt)": points_text(row.minimum_detectable_difference),
            seeds_header: "" if pd.isna(row.seeds_needed) else f"{row.seeds_needed:.0f}",
            "Accuracy (%)": mean_std(row.accuracy_mean, row.accuracy_std, 100),
            "Validation loss": mean_std(row.validation_loss_mean, row.validation_loss_std, digits=3),
            "Train loss": mean_std(row.train_loss_mean, row.train_loss_std, digits=3),
            "Loss gap": mean_std(row.loss_gap_mean, row.loss_gap_std, digits=3),
            "NLL": mean_std(row.nll_mean, row.nll_std, digits=3),
            "ECE": mean_std(row.ece_mean, row.ece_std, digits=3),
            "Brier": mean_std(row.brier_mean, row.brier_std, digits=3),
            "Attention entropy (nats)": mean_std(row.attention_entropy_mean, row.attention_entropy_std, digits=2),
            "Kept fraction": mean_std(row.kept_fraction_mean, row.kept_fraction_std, digits=3),
            "Train examples/s": mean_std(row.examples_per_s_mean, row.examples_per_s_std, digits=1),
            "Achieved TFLOP/s": mean_std(row.achieved_flops_per_s_mean, row.achieved_flops_per_s_std, 1e-12),
            "MFU (%)": mean_std(row.mfu_mean, row.mfu_std, 100, digits=1),
        }
        if compact:
            keep = (
                "Task",
                "Model",
                "Experiment",
                "Sparsity set (%)",
                "Sparsity measured (%)",
                "Seeds",
                "Metric",
                "Primary (×100)",
                "Δ primary [CI] (pt)",
                "p (Holm)",
                "Significant",
                "MDD (pt)",
                "Validation loss",
                "ECE",
            )
            display = {key: display[key] for key in keep}
        rows.append(display)
    return pd.DataFrame(rows)


def significance_sentence(summary: pd.DataFrame, statistics: dict) -> str:
    """Which differences to the baseline are significant, in words (Holm-corrected paired t-test)."""
    compared = summary.dropna(subset=["delta_primary_mean"])
    if compared.empty:
        return "No experiment could be compared with its baseline (no shared seeds)."
    level = f"{(1 - statistics['confidence']) * 100:g} %"
    significant = compared[compared["significant"].fillna(False).astype(bool)]
    if significant.empty:
        return (
            f"No difference to the baseline is significant at {level} after Holm's correction "
            f"({len(compared)} comparisons)."
        )
    described = "; ".join(
        f"{row.experiment} on {row.task} / {row.model} ({metric_label(row.metric)} "
        f"{'higher' if row.delta_primary_mean > 0 else 'lower'} by {abs(row.delta_primary_mean) * 100:.2f} pt, "
        f"{statistics['confidence'] * 100:g} % CI {row.delta_primary_low * 100:+.2f} to "
        f"{row.delta_primary_high * 100:+.2f}, Holm p {p_value_text(row.holm_p_value)})"
        for row in significant.itertuples()
    )
    return (
        f"Significant at {level} after Holm's correction, {len(significant)} of {len(compared)} comparisons: "
        f"{described}. No other difference is."
    )


def summary_note(runs: pd.DataFrame, summary: pd.DataFrame, settings: dict) -> str:
    """One paragraph: seeds, what ± and the brackets mean, the tests and corrections used, and which
    results are significant."""
    statistics = settings["statistics"]
    seeds = ", ".join(str(seed) for seed in sorted(runs["seed"].unique()))
    level = f"{statistics['confidence'] * 100:g} %"
    alpha = f"{(1 - statistics['confidence']) * 100:g} %"
    note = (
        f"Seeds {seeds}; values are mean ± sample standard deviation over seeds (no ± with a single seed); "
        "the primary metric (named in the Metric column), accuracy and MFU are shown ×100, differences in points. "
        "Sparsity set is the configured fraction of keys removed; sparsity measured is 1 − the kept fraction "
        "of keys on the validation set (at evaluation, so 0 for training-only sparsity). "
        f"Each experiment is compared with {settings['baseline']} of the same task and model over the seeds both "
        "share: its row's means, stds, Δ and every test use those seeds only (Seeds counts them; † marks an "
        "experiment whose seed set differs from its baseline's, the seeds left out are in summary.csv's "
        "unpaired_seeds). "
        f"The verdict is at the level of the training run: Δ primary is the mean per-seed difference with a {level} "
        "paired t interval (df = seeds − 1); p (t) is the two-sided paired t-test; Significant means it rejects at "
        f"{alpha} after Holm's correction within the family of one task × model (every experiment compared with "
        "that baseline), p (Holm) being the adjusted p-value; q (BH) is the Benjamini–Hochberg q-value across all "
        "comparisons of the run. p (sign-flip) is the two-sided exact sign-flip permutation test on the same "
        "differences (Monte Carlo, p = (count + 1) / (draws + 1), beyond 20 seeds); with n seeds it cannot go "
        "below 2/2^n. "
        f"Δ CI, test-set sampling is a {level} paired bootstrap over validation examples "
        f"({statistics['bootstrap_resamples']} resamples, seed {statistics['bootstrap_seed']}): it holds the "
        "trained models fixed, so it speaks to which examples were drawn, not to seed-to-seed variation. "
        "McNemar per seed counts the seeds whose own two-sided exact McNemar test (that seed's two models, "
        f"examples gained vs lost) rejects at {alpha}, with the range of their p-values; predictions are never "
        "pooled over seeds. "
        f"MDD is the true difference the paired t-test detects with {statistics['power'] * 100:g} % power at "
        f"level {alpha} / family size (Holm's strictest step), from the seeds' spread (exact noncentral t)"
    )
    if statistics.get("target_difference") is not None:
        note += (
            f"; Seeds for {statistics['target_difference']:g} pt is how many seeds the same test needs to detect "
            f"{statistics['target_difference']:g} point at that power and spread (`crisp plan` prints it)"
        )
    note += f". ECE uses {CALIBRATION_BINS} equal-width confidence bins. Loss gap = validation loss − final train loss."
    limited = sorted(
        {
            int(n)
            for n in summary["paired_seeds"].dropna()
            if n > 0 and stats.sign_flip_minimum_p(int(n)) > 1 - statistics["confidence"]
        }
    )
    if limited:
        counts = ", ".join(f"{n} seeds (smallest p {stats.sign_flip_minimum_p(n):.3g})" for n in limited)
        note += f" With {counts} the sign-flip test cannot reject at {alpha}."
    if summary["seed_sets_differ"].fillna(False).astype(bool).any():
        differing = summary[summary["seed_sets_differ"].fillna(False).astype(bool)]
        note += (
            " Seed sets differ (†) for "
            + "; ".join(
                f"{row.experiment} on {row.task} / {row.model} ({row.unpaired_seeds} unpaired)"
                for row in differing.itertuples()
            )
            + "."
        )
    note += f" {significance_sentence(summary, statistics)}"
    if any(paper_applies(row.dataset, row.model) for row in summary.itertuples()):
        (dense, _, dense_accuracy), (aggressive, _, aggressive_accuracy) = PAPER_REPORTED
        note += (
            f" For reference, the paper reports {aggressive_accuracy:.2f} % ({aggressive}) vs {dense_accuracy:.2f} % "
            f"({dense}) for {PAPER_MODEL} on {PAPER_DATASET}, on {PAPER_EXAMPLES} of the {SST2_VALIDATION_EXAMPLES} "
            "validation examples, with one run each."
        )
    return note


def write_summary_markdown(summary: pd.DataFrame, runs: pd.DataFrame, settings: dict, path: Path) -> None:
    # disable_numparse keeps "+0.50" and "91.20" as written instead of reformatting them.
    table = summary_display(summary).to_markdown(index=False, disable_numparse=True)
    note = summary_note(runs, summary, settings) + inputs_sentence(summary)
    path.write_text(f"# Validation results\n\n{table}\n\n{note}\n")


def latex_escape(text: str) -> str:
    for character in "&%$#_{}":
        text = text.replace(character, "\\" + character)
    return text.replace("^", r"\^{}")


def write_summary_latex(summary: pd.DataFrame, runs: pd.DataFrame, settings: dict, path: Path) -> None:
    display = summary_display(summary, compact=True)
    styler = display.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    latex = styler.to_latex(
        hrules=True,  # booktabs rules
        caption=latex_escape(summary_note(runs, summary, settings)),
        label="tab:summary",
        position_float="centering",
        column_format="lll" + "r" * (display.shape[1] - 3),
    )
    # Plain ASCII LaTeX so that pdflatex compiles it without extra packages.
    for text, replacement in (
        ("±", r"$\pm$"),
        ("Δ", r"$\Delta$"),
        ("−", "$-$"),
        ("×", r"$\times$"),
        ("†", r"$^\dagger$"),
    ):
        latex = latex.replace(text, replacement)
    path.write_text(latex)


# ---------------------------------------------------------------- flops.csv / flops.md


def load_flops_rows(flops_paths: Iterable[str | Path]) -> pd.DataFrame:
    """The long FLOPs table from R/flops/<model_slug>/<experiment>.json files, with model columns."""
    from crisp.flops import ROW_COLUMNS, flops_rows  # only when FLOPs are tabled

    columns = ["model", "model_slug", *ROW_COLUMNS]
    frames = []
    for path in map(Path, flops_paths):
        try:
            report = json.loads(path.read_text())
            rows = pd.DataFrame(flops_rows(report), columns=list(ROW_COLUMNS))
        except FileNotFoundError:
            raise RunFormatError(
                f"{path}: no such FLOPs file; run `crisp flops` for this model and experiment."
            ) from None
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise RunFormatError(
                f"{path}: not a FLOPs report of `crisp flops` ({type(error).__name__}: {error}); "
                "rerun `crisp flops` for it."
            ) from None
        frames.append(rows.assign(model=report.get("model") or path.parent.name, model_slug=path.parent.name))
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def flops_reductions(flops: pd.DataFrame) -> pd.DataFrame:
    """Forward-pass reduction of the 'total' component per (model, experiment, n), one column per view, in %."""
    totals = flops[(flops["component"] == "total") & (flops["pass"] == "forward")]
    index = ["model", "experiment", "sequence"]
    totals = totals.assign(sequence=totals["seq_len"])
    table = totals.pivot_table(index=index, columns="view", values="reduction", aggfunc="first", dropna=False)
    table = table.reindex(columns=list(FLOPS_VIEWS)) * 100
    sparsity = totals.groupby(["model", "experiment"], sort=False)["sparsity"].first()
    table = table.reset_index().rename(columns={"sequence": "seq_len"})
    table = table.dropna(subset=list(FLOPS_VIEWS), how="all")
    table.insert(2, "sparsity", [sparsity.get((m, e)) for m, e in zip(table["model"], table["experiment"])])
    # Dense first, then by sparsity; adaptive patterns (no sparsity set) last.
    table["order"] = pd.to_numeric(table["sparsity"], errors="coerce").fillna(np.inf)
    table = table.sort_values(["model", "order", "experiment", "seq_len"]).drop(columns="order")
    return table.reset_index(drop=True)


def percent_text(value) -> str:
    return "" if pd.isna(value) else f"{value:.1f}"


def write_flops_markdown(flops: pd.DataFrame, path: Path) -> None:
    if flops.empty:
        path.write_text("# FLOPs per encoder layer\n\nNo FLOPs results were given.\n")
        return
    reductions = flops_reductions(flops)
    sections = []
    for model, table in reductions.groupby("model", sort=False):
        display = pd.DataFrame(
            {
                "Experiment": table["experiment"],
                "Sparsity (%)": [
                    percent_text(s * 100) if pd.notna(s) else "measured" for s in pd.to_numeric(table["sparsity"])
                ],
                "n (tokens)": table["seq_len"].astype(int).astype(str),
                **{label: table[view].map(percent_text) for view, label in FLOPS_VIEWS.items()},
            }
        )
        sections.append(f"## {model}\n\n{display.to_markdown(index=False, disable_numparse=True)}")
    note = (
        "Reduction of forward-pass FLOPs per encoder layer and sequence, relative to dense attention. "
        "As executed: what a top-k mask really computes (the full QKᵀ is needed to choose the keys). "
        "Ideal sparse kernel: scores, softmax and attention·V computed only for the kept keys. "
        "Paper accounting: the attention sub-layer alone, feed-forward network excluded. "
        "Adaptive normalisers (sparsemax, entmax) set no sparsity in advance: their sparsity is measured "
        "per run (kept fraction in summary.md), so the ideal views are blank where no fixed count exists."
    )
    path.write_text("# FLOPs per encoder layer\n\n" + "\n\n".join(sections) + f"\n\n{note}\n")


# ---------------------------------------------------------------- entry point

# The file names the workflow declares as the tables rule's outputs (crisp.layout names every path).
TABLE_FILES = TABLES


def write_tables(
    run_dirs: Iterable[str | Path], flops_paths: Iterable[str | Path], out_dir: str | Path, settings: dict
) -> list[Path]:
    """Write TABLE_FILES into out_dir from run folders and FLOPs reports; return their paths.

    settings: crisp.settings.tables_settings(config), i.e. baseline, tasks (metric and dataset name per
    task), models, experiments and statistics (bootstrap_resamples, bootstrap_seed, confidence, power,
    target_difference).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dirs = [Path(run_dir) for run_dir in run_dirs]
    runs, predictions = load_runs(run_dirs, settings)
    summary = summarize(runs, predictions, settings)
    flops = load_flops_rows(flops_paths)

    paths = {name: out_dir / name for name in TABLE_FILES}
    collect_runs(run_dirs).to_csv(paths["runs.csv"], index=False)
    summary.to_csv(paths["summary.csv"], index=False)
    write_summary_markdown(summary, runs, settings, paths["summary.md"])
    write_summary_latex(summary, runs, settings, paths["summary.tex"])
    pooled = pooled_effects(summary, settings["statistics"]["confidence"])
    pooled.to_csv(paths["pooled.csv"], index=False)
    write_pooled_markdown(pooled, paths["pooled.md"])
    flops.to_csv(paths["flops.csv"], index=False)
    write_flops_markdown(flops, paths["flops.md"])
    return list(paths.values())
