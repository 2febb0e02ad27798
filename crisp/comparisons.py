"""One experiment against the baseline of its task and model, over the seeds the two share.

    compare_to_baseline  the paired t-test and sign-flip test over seeds, the bootstrap interval from
                         test-set sampling and one McNemar test per seed, for one comparison
    add_verdicts         Holm's correction within each task x model (the verdict, `significant`),
                         Benjamini-Hochberg across the run, the detectable difference and seeds needed

The statistics themselves are crisp.stats; crisp.tables arranges the results into summary.csv.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from crisp import stats
from crisp.errors import RunFormatError


def paired_examples(baseline: pd.DataFrame, experiment: pd.DataFrame, where: str) -> pd.DataFrame:
    """The experiment's predictions in the baseline's example order; refuses different examples."""
    if set(baseline.index) != set(experiment.index):
        raise RunFormatError(
            f"{where}: the two runs predicted different validation examples; pair only runs of one task."
        )
    experiment = experiment.loc[baseline.index]
    if not (baseline["label"].to_numpy() == experiment["label"].to_numpy()).all():
        raise RunFormatError(f"{where}: the same example index has different labels; the runs used different data.")
    return experiment


def shared_seeds(runs: pd.DataFrame, baseline_runs: pd.DataFrame) -> list[int]:
    return sorted(set(runs["seed"]) & set(baseline_runs["seed"]))


def unpaired_text(runs: pd.DataFrame, baseline_runs: pd.DataFrame) -> str:
    """'aggressive_sparse: 7; dense_baseline: 5 6': each arm's seeds without a partner in the other."""
    seeds = set(shared_seeds(runs, baseline_runs))
    parts = []
    for arm in (runs, baseline_runs):
        alone = sorted(set(arm["seed"]) - seeds)
        if alone:
            parts.append(f"{arm['experiment'].iloc[0]}: {' '.join(map(str, alone))}")
    return "; ".join(parts)


def compare_to_baseline(runs: pd.DataFrame, baseline_runs: pd.DataFrame, predictions: dict, statistics: dict) -> dict:
    """The paired t-test and sign-flip test over seeds, the bootstrap interval from test-set sampling
    and one McNemar test per seed, for one experiment against its baseline, on their shared seeds."""
    task, model_slug, experiment, baseline = (
        runs["task"].iloc[0],
        runs["model_slug"].iloc[0],
        runs["experiment"].iloc[0],
        baseline_runs["experiment"].iloc[0],
    )
    seeds = shared_seeds(runs, baseline_runs)
    unpaired = unpaired_text(runs, baseline_runs)
    result = {
        "baseline": baseline,
        "paired_seeds": len(seeds),
        "seed_sets_differ": bool(unpaired),
        "unpaired_seeds": unpaired,
        "power": statistics["power"],
        "target_difference": statistics.get("target_difference"),
    }
    if not seeds:
        result["paired_test"] = f"no seed shared with {baseline}"
        return result

    metric = runs["metric"].iloc[0]
    alpha = 1 - statistics["confidence"]
    baseline_predictions, experiment_predictions, gained, lost, mcnemar = [], [], [], [], []
    for seed in seeds:
        base = predictions[(task, model_slug, baseline, seed)]
        other = paired_examples(
            base,
            predictions[(task, model_slug, experiment, seed)],
            f"predictions of {task}/{model_slug}/{experiment} vs {baseline}, seed {seed}",
        )
        if baseline_predictions and not (
            np.array_equal(base.index, baseline_predictions[0].index)
            and np.array_equal(base["label"].to_numpy(), baseline_predictions[0]["label"].to_numpy())
        ):
            raise RunFormatError(
                f"{task}/{model_slug}/{baseline}: seeds {seeds[0]} and {seed} list different examples (or labels) "
                "under the same index; every run must write predictions.csv in validation-set order."
            )
        baseline_predictions.append(base)
        experiment_predictions.append(other)
        base_right = base["prediction"].to_numpy() == base["label"].to_numpy()
        other_right = other["prediction"].to_numpy() == other["label"].to_numpy()
        gained.append(int((~base_right & other_right).sum()))
        lost.append(int((base_right & ~other_right).sum()))
        mcnemar.append(stats.mcnemar_exact_p_value(gained[-1], lost[-1]))

    interval = stats.paired_bootstrap(
        baseline_predictions[0]["label"].to_numpy(),
        [frame["prediction"].to_numpy() for frame in baseline_predictions],
        [frame["prediction"].to_numpy() for frame in experiment_predictions],
        metric,
        resamples=statistics["bootstrap_resamples"],
        seed=statistics["bootstrap_seed"],
        confidence=statistics["confidence"],
        num_classes=sum(column.startswith("prob_") for column in baseline_predictions[0].columns),
    )
    experiment_primary = runs.set_index("seed").loc[seeds, "primary"]
    baseline_primary = baseline_runs.set_index("seed").loc[seeds, "primary"]
    differences = (experiment_primary - baseline_primary).to_numpy()
    test = stats.paired_t_test(differences, statistics["confidence"])
    result.update(
        baseline_primary_mean=float(baseline_primary.mean()),
        delta_primary_mean=test["mean"],
        delta_primary_std=test["std"],
        delta_primary_low=test["low"],
        delta_primary_high=test["high"],
        confidence=statistics["confidence"],
        paired_test=f"paired t-test, n={len(seeds)}" if len(seeds) >= 2 else "paired t-test needs 2 seeds",
        t_statistic=test["t"],
        t_df=test["df"] if len(seeds) >= 2 else None,
        t_p_value=test["p_value"],
        sampling_low=interval["low"],
        sampling_high=interval["high"],
        bootstrap_resamples=interval["resamples"],
        bootstrap_seed=interval["seed"],
        validation_examples=len(baseline_predictions[0]),
        mcnemar_gained_per_seed=" ".join(map(str, gained)),
        mcnemar_lost_per_seed=" ".join(map(str, lost)),
        mcnemar_rejecting_seeds=sum(p < alpha for p in mcnemar),
        mcnemar_p_min=min(mcnemar),
        mcnemar_p_max=max(mcnemar),
    )
    result["sign_flip_p_value"], result["sign_flip_test"] = stats.sign_flip_test(differences)
    result["sign_flip_min_p"] = stats.sign_flip_minimum_p(len(seeds))
    return result


def add_verdicts(summary: pd.DataFrame, statistics: dict) -> pd.DataFrame:
    """Holm within each family (one task x model: every experiment against that baseline), BH across the
    run, and the design columns at the family's Holm level alpha / family_size."""
    alpha = 1 - statistics["confidence"]
    tested = summary["t_p_value"].notna().to_numpy()
    family = np.where(tested, summary["task"] + " / " + summary["model"], None)
    holm, size = np.full(len(summary), np.nan), np.full(len(summary), np.nan)
    # A comparison without a t-test (one shared seed) is not significant; rows without one stay blank.
    significant = np.where(summary["delta_primary_mean"].notna(), False, None).astype(object)
    for name in dict.fromkeys(family[tested]):
        members = np.flatnonzero(family == name)
        rejected, holm[members] = stats.holm_adjusted(summary["t_p_value"].to_numpy()[members], alpha)
        size[members], significant[members] = len(members), rejected
    detectable, needed = np.full(len(summary), np.nan), np.full(len(summary), np.nan)
    for index in np.flatnonzero(tested):
        level = alpha / size[index]
        std, n = summary["delta_primary_std"].iloc[index], int(summary["paired_seeds"].iloc[index])
        detectable[index] = stats.detectable_effect_size(n, level, statistics["power"]) * std
        if statistics.get("target_difference") is not None:  # in points of the metric (x 100)
            target = statistics["target_difference"] / 100
            needed[index] = stats.seeds_needed(std, target, level, statistics["power"])
    return summary.assign(
        family=family,
        family_size=size,
        holm_p_value=holm,
        bh_q_value=stats.bh_q_values(summary["t_p_value"].to_numpy(dtype=float), alpha),
        significant=pd.array(significant, dtype="boolean"),
        minimum_detectable_difference=detectable,
        seeds_needed=needed,
    )
