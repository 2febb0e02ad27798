"""One answer across the matrix, and the seeds a design needs: from summary.csv's comparisons.

    pooled_effects   per experiment present in several (task, model) groups, a random-effects
                     meta-analysis of its seed-level effects (crisp.stats.random_effects)
    plan_table       per comparison, the seeds the paired t-test needs to detect a target difference

Each (task, model) group contributes its mean per-seed difference to the baseline. Where every
comparison of the run uses one metric the effects stay in its points, with variance sd^2 / n (sd of
the n per-seed differences); otherwise they are standardised, d = mean / sd (the paired "d_z"), with
variance 1/n + d^2 / (2n), so that accuracy, MCC and F1 combine. A group whose differences have no
spread (or fewer than two seeds) has no variance to weigh it by and is left out, and said so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from crisp import stats
from crisp.metrics import metric_label

POOLED_COLUMNS = [
    "experiment",
    "pattern",
    "sparsity",
    "scale",
    "metric",
    "groups",
    "groups_left_out",
    "effect",
    "se",
    "low",
    "high",
    "confidence",
    "tau2",
    "i2",
    "q",
    "q_p_value",
    "prediction_low",
    "prediction_high",
    "method",
]
METHOD = "random effects, Paule-Mandel tau^2 (statsmodels combine_effects), t interval on groups - 1 df"
POINTS, STANDARDISED = "points", "standardised (d_z)"


def comparable(summary: pd.DataFrame) -> pd.DataFrame:
    """The comparisons with a seed-level effect and spread."""
    compared = summary[summary["t_p_value"].notna()]
    return compared.assign(pooled_ok=compared["delta_primary_std"].gt(0) & compared["paired_seeds"].ge(2))


def pooled_effects(summary: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """pooled.csv: one row per experiment compared in at least two (task, model) groups."""
    compared = comparable(summary)
    scale = POINTS if compared["metric"].nunique() <= 1 else STANDARDISED
    rows = []
    for experiment, groups in compared.groupby("experiment", sort=False):
        usable = groups[groups["pooled_ok"]]
        if len(groups) < 2:
            continue
        first = groups.iloc[0]
        row = {
            "experiment": experiment,
            "pattern": first["pattern"],
            "sparsity": first["sparsity"],
            "scale": scale,
            "metric": first["metric"] if scale == POINTS else "",
            "groups": len(usable),
            "groups_left_out": "; ".join(f"{g.task} / {g.model}" for g in groups[~groups["pooled_ok"]].itertuples()),
            "confidence": confidence,
            "method": METHOD,
        }
        if len(usable) >= 2:
            n = usable["paired_seeds"].to_numpy(dtype=float)
            mean, std = usable["delta_primary_mean"].to_numpy(float), usable["delta_primary_std"].to_numpy(float)
            if scale == POINTS:
                effects, variances = mean, std**2 / n
            else:
                effects = mean / std
                variances = 1 / n + effects**2 / (2 * n)
            fit = stats.random_effects(effects, variances, confidence)
            row.update({key: fit[key] for key in POOLED_COLUMNS if key in fit and key != "groups"})
        rows.append(row)
    return pd.DataFrame(rows, columns=POOLED_COLUMNS)


def write_pooled_markdown(pooled: pd.DataFrame, path: Path) -> None:
    title = "# Pooled effects across tasks and models\n\n"
    if pooled.empty:
        path.write_text(
            title + "No experiment was compared with its baseline in two or more (task, model) groups: "
            "there is nothing to pool.\n"
        )
        return
    points = pooled["scale"].iloc[0] == POINTS
    scale, unit = (100, "pt") if points else (1, "d_z")

    def value(number, digits=2):
        return "" if pd.isna(number) else f"{number * scale:+.{digits}f}"

    table = pd.DataFrame(
        {
            "Experiment": pooled["experiment"],
            "Groups": pooled["groups"].astype(str),
            f"Pooled effect ({unit})": [value(v) for v in pooled["effect"]],
            f"{pooled['confidence'].iloc[0] * 100:g} % CI": [
                "" if pd.isna(low) else f"[{value(low)}, {value(high)}]"
                for low, high in zip(pooled["low"], pooled["high"])
            ],
            f"τ² ({unit}²)": ["" if pd.isna(t) else f"{t * scale**2:.3g}" for t in pooled["tau2"]],
            "I² (%)": ["" if pd.isna(i) else f"{i * 100:.0f}" for i in pooled["i2"]],
            "Prediction interval": [
                "" if pd.isna(low) else f"[{value(low)}, {value(high)}]"
                for low, high in zip(pooled["prediction_low"], pooled["prediction_high"])
            ],
            "Left out (no spread)": pooled["groups_left_out"].fillna(""),
        }
    )
    if points:
        how = (
            f"in points of {metric_label(pooled['metric'].iloc[0])} (every comparison uses this metric), with "
            "variance sd²/n (sd of the n seed-paired differences)"
        )
    else:
        how = (
            "standardised, d_z = mean per-seed difference / its standard deviation, with variance 1/n + d_z²/(2n), "
            "because the tasks' primary metrics differ"
        )
    note = (
        "Each (task, model) group gives one effect: the experiment's mean per-seed difference to the baseline of "
        f"that task and model, {how}. "
        "Random-effects meta-analysis (statsmodels combine_effects, Paule–Mandel τ²; the CI on Student's t with "
        "groups − 1 degrees of freedom); I² from Cochran's Q; the prediction interval (from three groups on, "
        "t with groups − 2 df) is where the effect in a new task × model would fall. Groups whose differences "
        "have no spread, or fewer than two seeds, are left out."
    )
    path.write_text(title + table.to_markdown(index=False, disable_numparse=True) + f"\n\n{note}\n")


def plan_table(summary: pd.DataFrame, target: float | None = None, power: float | None = None) -> pd.DataFrame:
    """Per comparison: paired seeds, spread of the differences and MDD (points), and the seeds the paired
    t-test needs to detect `target` points at `power`, at level alpha / family size (Holm's strictest
    step). target and power default to the ones the summary was made with."""
    compared = summary[summary["t_p_value"].notna()]
    rows = []
    for row in compared.itertuples():
        wanted = row.target_difference if target is None else target
        at_power = row.power if power is None else power
        level = (1 - row.confidence) / row.family_size
        needed = (
            stats.seeds_needed(row.delta_primary_std, wanted / 100, level, at_power) if pd.notna(wanted) else np.nan
        )
        detectable = stats.detectable_effect_size(int(row.paired_seeds), level, at_power) * row.delta_primary_std
        rows.append(
            {
                "task": row.task,
                "model": row.model,
                "experiment": row.experiment,
                "paired seeds": int(row.paired_seeds),
                "sd of differences (pt)": f"{row.delta_primary_std * 100:.2f}",
                "level": f"{level:.3g}",
                "MDD now (pt)": f"{detectable * 100:.2f}",
                f"seeds for {wanted:g} pt at {at_power * 100:g} % power": "" if pd.isna(needed) else f"{needed:.0f}",
            }
        )
    return pd.DataFrame(rows)
