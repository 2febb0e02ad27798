"""Figures of the report, drawn from results/tables/ and the run folders.

    sparsity_effects                      every task x model: each experiment's difference to its baseline
                                          on the primary metric (paired t interval over seeds, per-seed
                                          differences), and at the bottom each experiment pooled over them
    <task>/<model>/metric_vs_sparsity     primary metric against measured sparsity, one line per pattern,
                                          controls apart
    <task>/<model>/validation_loss_curves validation (and train) loss during fine-tuning
    <task>/<model>/loss_gap               validation loss - final train loss per experiment
    <task>/<model>/attention_maps         last-layer attention, baseline vs the most sparse experiment
    <task>/<model>/reliability            reliability diagram, baseline vs the most sparse top-k experiment
    <task>/<model>/attention_entropy      attention entropy and kept fraction per layer and experiment
    flops/<model>                         FLOPs per layer by component and sequence length

Each `plot_*` function returns a matplotlib Figure; `write_figures` (the entry point of `crisp figures`)
saves each as .png and .pdf. The names come from crisp.layout, which the Snakefile also reads; this
module imports matplotlib only when it draws, so `figure_paths` is cheap. A figure whose data is missing
is still written, as a page that says what is missing, so the workflow's declared outputs always exist.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from crisp.layout import FIGURE_FORMATS, TASK_MODEL_FIGURES, figure_names, model_slug
from crisp.runs import read_attention, read_history, read_metrics, read_predictions

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Drawn once per (task, model) under figures/<task>/<model_slug>/ (the list crisp.layout declares).
FIGURES_PER_TASK_MODEL = TASK_MODEL_FIGURES
DPI = 150
RELIABILITY_BINS = 15  # equal-width confidence bins, as the ECE in metrics.json (crisp.metrics)
PALETTE = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
    "tab:gray",
)
FLOPS_COMPONENTS = {
    "qkv_projections": "Q, K, V projections",
    "qk_scores": "QKᵀ scores",
    "softmax": "softmax",
    "attention_values": "attention · V",
    "output_projection": "output projection",
    "ffn": "feed-forward network",
    "block_scores": "block selection (block_topk)",
}


def figure_paths(settings: dict) -> list[str]:
    """Every file write_figures writes, relative to the figures folder (png and pdf of each figure)."""
    return [
        f"{name}.{extension}"
        for name in figure_names(settings["tasks"], settings["models"])
        for extension in FIGURE_FORMATS
    ]


def new_figure(**options) -> Figure:
    from matplotlib.figure import Figure  # object API: no pyplot state, no display backend needed

    return Figure(layout="constrained", **options)


def colors_of(names: Iterable[str]) -> dict[str, str]:
    """The same colour for an experiment (or pattern) in every panel of a figure."""
    return {name: PALETTE[position % len(PALETTE)] for position, name in enumerate(dict.fromkeys(names))}


def effective_sparsity(row) -> float:
    """The configured sparsity, or for adaptive normalisers the measured one: 1 - mean kept fraction."""
    if pd.notna(row["sparsity"]):
        return float(row["sparsity"])
    kept = row.get("kept_fraction_mean")
    return 1 - float(kept) if pd.notna(kept) else np.nan


def measured_sparsity(row) -> float:
    """Sparsity as realised on the validation set, 1 - mean kept fraction (summary.csv's
    measured_sparsity); the configured sparsity where nothing was measured."""
    measured = row.get("measured_sparsity")
    if measured is None or pd.isna(measured):
        kept = row.get("kept_fraction_mean")
        measured = 1 - kept if kept is not None and pd.notna(kept) else np.nan
    return float(measured) if pd.notna(measured) else effective_sparsity(row)


def sparsity_label(row) -> str:
    """'80 % set, 77 % measured'; adaptive patterns have only the measured one."""
    measured = measured_sparsity(row)
    measured_text = "?" if np.isnan(measured) else f"{measured * 100:.0f} %"
    if pd.isna(row["sparsity"]):
        return f"{measured_text} measured"
    return f"{row['sparsity'] * 100:.0f} % set, {measured_text} measured"


def is_control(row) -> bool:
    """Controls are not points of a sparsity curve: training-only sparsity and attention dropout."""
    return row["apply"] == "train" or (pd.notna(row["attention_dropout"]) and row["attention_dropout"] > 0)


def control_label(row) -> str:
    parts = []
    if row["apply"] == "train":
        parts.append("sparse in training only")
    if pd.notna(row["attention_dropout"]) and row["attention_dropout"] > 0:
        parts.append(f"attention dropout {row['attention_dropout']:g}")
    return f"{row['experiment']} ({', '.join(parts)})"


def paper_points(dataset: str, model: str, metric: str) -> tuple:
    """The paper's (experiment, sparsity, accuracy %) where they apply: DistilBERT on SST-2, accuracy."""
    from crisp.tables import PAPER_REPORTED, paper_applies

    return PAPER_REPORTED if metric == "accuracy" and paper_applies(dataset, model) else ()


def placeholder_figure(title: str, message: str) -> Figure:
    figure = new_figure(figsize=(7, 3))
    figure.text(0.5, 0.6, title, ha="center", fontsize=12, weight="bold")
    figure.text(0.5, 0.4, "\n".join(textwrap.wrap(message, 90)), ha="center", va="top", fontsize=10)
    return figure


# ---------------------------------------------------------------- sparsity_effects


def is_significant(value) -> bool:
    """summary.csv's significant column: True, False or blank (no comparison)."""
    return pd.notna(value) and str(value).lower() in ("true", "1", "1.0")


def seed_differences(runs: pd.DataFrame, row, baseline: str) -> np.ndarray:
    """Per-seed differences of the primary metric to the baseline of the same task and model."""
    pair = runs[(runs["task"] == row["task"]) & (runs["model_slug"] == row["model_slug"])]
    experiment = pair[pair["experiment"] == row["experiment"]].set_index("seed")["primary"]
    reference = pair[pair["experiment"] == baseline].set_index("seed")["primary"]
    seeds = sorted(set(experiment.index) & set(reference.index))
    return (experiment.loc[seeds] - reference.loc[seeds]).to_numpy()


def plot_sparsity_effects(
    summary: pd.DataFrame, runs: pd.DataFrame, baseline: str, pooled: pd.DataFrame | None = None
) -> Figure:
    """Forest plot: point = mean difference over seeds, bar = paired t interval (filled: significant
    after Holm), dots = single seeds (x 100); at the bottom, each experiment pooled over tasks and
    models (random effects: diamond and interval, thin line the prediction interval)."""
    from matplotlib.lines import Line2D

    from crisp.metrics import metric_label
    from crisp.pooling import POINTS
    from crisp.tables import PAPER_REPORTED, paper_applies

    compared = summary.dropna(subset=["delta_primary_mean"])
    groups = list(compared.groupby(["task", "model_slug"], sort=False))
    rows = len(compared) + len(groups)
    pooled = pooled.dropna(subset=["effect"]) if pooled is not None else pd.DataFrame()
    pooled_rows = len(pooled) + 1 if len(pooled) else 0
    figure = new_figure(figsize=(8, 2.4 + 0.32 * (rows + pooled_rows)))
    if pooled_rows:
        axes, pooled_axes = figure.subplots(2, 1, height_ratios=[rows, pooled_rows + 1.5])
    else:
        axes, pooled_axes = figure.subplots(), None
    colors = colors_of(compared["pattern"])
    jitter = np.random.default_rng(0)  # spreads seeds vertically so equal differences stay visible
    position, ticks, labels = rows, [], []
    for (task, _), group in groups:
        first = group.iloc[0]
        axes.text(
            0.01,
            position,
            f"{task} · {first['model']} ({metric_label(first['metric'])})",
            transform=axes.get_yaxis_transform(),
            fontsize=8,
            weight="bold",
            va="center",
        )
        position -= 1
        for _, row in group.iterrows():
            color = colors[row["pattern"]]
            differences = seed_differences(runs, row, baseline) * 100
            axes.scatter(
                differences,
                position + jitter.uniform(-0.15, 0.15, len(differences)),
                s=10,
                color=color,
                alpha=0.45,
                zorder=2,
            )
            mean = row["delta_primary_mean"] * 100
            low, high = row["delta_primary_low"] * 100, row["delta_primary_high"] * 100
            xerr = None if np.isnan(low) else [[mean - low], [high - mean]]  # no interval from one seed
            axes.errorbar(
                mean,
                position,
                xerr=xerr,
                fmt="o",
                color=color,
                capsize=3,
                zorder=3,
                markerfacecolor=color if is_significant(row["significant"]) else "white",
            )
            if (
                row["experiment"] == PAPER_REPORTED[1][0]
                and row["metric"] == "accuracy"
                and paper_applies(row["dataset"], row["model"])
            ):
                axes.scatter(
                    PAPER_REPORTED[1][2] - PAPER_REPORTED[0][2], position, marker="*", s=120, color="black", zorder=4
                )
            ticks.append(position)
            labels.append(f"{row['experiment']} ({sparsity_label(row)})")
            position -= 1
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_yticks(ticks, labels, fontsize=7)
    axes.set_ylim(position + 0.5, rows + 0.5)
    level = f"{compared['confidence'].iloc[0] * 100:g} %"
    axes.set_xlabel(f"difference to {baseline} on the task's primary metric (×100)")
    axes.set_title("Effect of attention sparsity, per task and model", fontsize=11)
    axes.grid(axis="x", alpha=0.3)
    handles = [
        Line2D(
            [],
            [],
            color="grey",
            marker="o",
            label=f"mean over seeds, {level} paired t CI (filled: significant after Holm)",
        ),
        Line2D([], [], color="grey", marker="o", linestyle="", alpha=0.45, markersize=3, label="single seeds"),
        *[Line2D([], [], color=color, linewidth=4, label=pattern) for pattern, color in colors.items()],
    ]
    if any(paper_applies(row.dataset, row.model) for row in compared.itertuples()):
        handles.append(Line2D([], [], color="black", marker="*", linestyle="", label="paper: +0.97 pt (single runs)"))
    if pooled_axes is not None:
        plot_pooled_rows(pooled_axes, pooled, colors)
        handles.append(
            Line2D([], [], color="black", marker="D", label="pooled (random effects), CI; thin: prediction interval")
        )
        if pooled["scale"].iloc[0] == POINTS:
            pooled_axes.set_xlim(axes.get_xlim())
    # Below the panels, so the axes keep the figure's width for long experiment names.
    figure.legend(handles=handles, fontsize=7, loc="outside lower center", ncols=2)
    return figure


def plot_pooled_rows(axes, pooled: pd.DataFrame, colors: dict) -> None:
    """The bottom rows of sparsity_effects: one per pooled experiment (pooling's table)."""
    from crisp.metrics import metric_label
    from crisp.pooling import POINTS

    points = pooled["scale"].iloc[0] == POINTS
    scale = 100 if points else 1
    position = len(pooled)
    axes.text(
        0.01,
        position + 1,
        "pooled over tasks × models (random effects)",
        transform=axes.get_yaxis_transform(),
        fontsize=8,
        weight="bold",
        va="center",
    )
    ticks, labels = [], []
    for row in pooled.itertuples():
        color = colors.get(row.pattern, "black")
        if pd.notna(row.prediction_low):
            axes.plot([row.prediction_low * scale, row.prediction_high * scale], [position] * 2, color=color, lw=0.8)
        effect = row.effect * scale
        axes.errorbar(
            effect,
            position,
            xerr=[[effect - row.low * scale], [row.high * scale - effect]],
            fmt="D",
            color=color,
            capsize=3,
            markersize=6,
            zorder=3,
        )
        ticks.append(position)
        labels.append(f"{row.experiment} ({row.groups} groups, I² {row.i2 * 100:.0f} %)")
        position -= 1
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_yticks(ticks, labels, fontsize=7)
    axes.set_ylim(position + 0.5, len(pooled) + 1.5)
    axes.grid(axis="x", alpha=0.3)
    if points:
        axes.set_xlabel(f"pooled difference ({metric_label(pooled['metric'].iloc[0])}, ×100)")
    else:
        axes.set_xlabel("pooled standardised difference d_z (mean / sd of the per-seed differences)")


# ---------------------------------------------------------------- metric_vs_sparsity


def plot_metric_vs_sparsity(summary: pd.DataFrame, runs: pd.DataFrame, baseline: str) -> Figure:
    """Primary metric (x 100) against sparsity: one line per pattern with its interval band; controls apart."""
    from crisp.metrics import metric_label

    figure = new_figure(figsize=(7.5, 5.4))
    axes = figure.subplots()
    first = summary.iloc[0]
    # Placed where the sparsity was measured on the validation set, not where it was configured: block
    # top-k on short inputs and top-k's rounding at small n keep more keys than the setting says.
    points = summary.assign(x=[measured_sparsity(row) * 100 for _, row in summary.iterrows()])
    reference = points[points["experiment"] == baseline]
    jitter = np.random.default_rng(0)

    def seeds_of(row):
        return runs[(runs["experiment"] == row["experiment"])]["primary"].to_numpy() * 100

    base_mean = np.nan
    if not reference.empty:
        base = reference.iloc[0]
        base_mean = base["primary_mean"] * 100
        axes.axhline(base_mean, color="black", linestyle=":", linewidth=1)
        seeds = seeds_of(base)
        axes.scatter(base["x"] + jitter.uniform(-0.6, 0.6, len(seeds)), seeds, color="black", alpha=0.3, s=12)
        axes.plot(base["x"], base_mean, "ks", label=f"{baseline} (mean over seeds)")

    curves = points[(points["experiment"] != baseline) & ~points.apply(is_control, axis=1)]
    colors = colors_of(curves["pattern"])
    for pattern, group in curves.groupby("pattern", sort=False):
        group = group.sort_values("x")
        color = colors[pattern]
        # Where the experiment lies given the baseline: baseline mean + paired t CI of the difference.
        low = base_mean + group["delta_primary_low"] * 100
        high = base_mean + group["delta_primary_high"] * 100
        mean = group["primary_mean"] * 100
        axes.plot(group["x"], mean, marker="o", color=color, label=f"{pattern} (mean over seeds)")
        axes.errorbar(
            group["x"],
            mean,
            yerr=[np.clip(mean - low, 0, None), np.clip(high - mean, 0, None)],
            fmt="none",
            color=color,
            capsize=3,
        )
        if len(group) > 1:
            axes.fill_between(group["x"], low, high, color=color, alpha=0.15, linewidth=0)
        for _, row in group.iterrows():
            seeds = seeds_of(row)
            axes.scatter(row["x"] + jitter.uniform(-0.6, 0.6, len(seeds)), seeds, color=color, alpha=0.3, s=12)

    controls = points[(points["experiment"] != baseline) & points.apply(is_control, axis=1)]
    for marker, (_, row) in zip(("D", "^", "v", "P", "X", "h"), controls.iterrows()):
        mean = row["primary_mean"] * 100
        low, high = base_mean + row["delta_primary_low"] * 100, base_mean + row["delta_primary_high"] * 100
        yerr = None if np.isnan(low) else [[max(mean - low, 0)], [max(high - mean, 0)]]
        axes.errorbar(
            row["x"],
            mean,
            yerr=yerr,
            fmt=marker,
            color="dimgray",
            capsize=3,
            markersize=7,
            label=f"control: {control_label(row)}",
        )

    stars = paper_points(first["dataset"], first["model"], first["metric"])
    if stars:
        axes.scatter(
            [s * 100 for _, s, _ in stars],
            [a for _, _, a in stars],
            marker="*",
            s=160,
            color="black",
            zorder=5,
            label="paper (single runs, 832 of 872 examples)",
        )
    level = summary["confidence"].dropna()
    band = (
        f"{level.iloc[0] * 100:g} % paired t CI (over seeds) of the difference to {baseline}"
        if len(level)
        else "no interval"
    )
    axes.set_xlabel(
        "attention sparsity measured on the validation set\n(% of keys masked per query: 1 − kept fraction)"
    )
    axes.set_ylabel(f"validation {metric_label(first['metric'])} (×100)")
    axes.set_title(
        f"{first['task']} · {first['model']}: {metric_label(first['metric'])} vs sparsity\n"
        f"bars/bands: {band}; faint dots: single seeds",
        fontsize=9,
    )
    axes.grid(alpha=0.3)
    # Below the axes, so that the title and the axis label keep the figure's width.
    figure.legend(fontsize=7, loc="outside lower center", ncols=2)
    return figure


# ---------------------------------------------------------------- validation_loss_curves


def plot_validation_loss_curves(histories: pd.DataFrame, order: list[str], title: str) -> Figure:
    """Mean over seeds per step, band = min-max over seeds; train loss dashed."""
    from matplotlib.lines import Line2D

    figure = new_figure(figsize=(9, 4.6))
    axes = figure.subplots()
    colors = colors_of(order)
    for experiment in order:
        history = histories[histories["experiment"] == experiment]
        validation = history.dropna(subset=["validation_loss"])
        if validation.empty:
            continue
        n_seeds = history["seed"].nunique()
        loss = validation.groupby("step")["validation_loss"].agg(["mean", "min", "max"])
        axes.plot(
            loss.index, loss["mean"], color=colors[experiment], marker=".", label=f"{experiment} ({n_seeds} seeds)"
        )
        axes.fill_between(loss.index, loss["min"], loss["max"], color=colors[experiment], alpha=0.2, linewidth=0)
        train = history.dropna(subset=["train_loss"]).groupby("step")["train_loss"].mean()
        axes.plot(train.index, train.to_numpy(), color=colors[experiment], linestyle="--", alpha=0.7)
    styles = [
        Line2D([], [], color="grey", marker=".", label="validation loss (mean; band: min–max over seeds)"),
        Line2D([], [], color="grey", linestyle="--", label="train loss (mean over seeds)"),
    ]
    # Both legends sit right of the axes so they never hide a curve.
    experiments_legend = axes.legend(
        fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), title="experiment", title_fontsize=8
    )
    axes.add_artist(experiments_legend)
    axes.legend(handles=styles, fontsize=7, loc="lower left", bbox_to_anchor=(1.02, 0))
    axes.set_xlabel("training step (optimizer updates)")
    axes.set_ylabel("cross-entropy loss (nats)")
    axes.set_title(f"Validation loss during fine-tuning: {title}", fontsize=10)
    axes.grid(alpha=0.3)
    return figure


# ---------------------------------------------------------------- loss_gap


def plot_loss_gap(summary: pd.DataFrame, runs: pd.DataFrame, title: str) -> Figure:
    figure = new_figure(figsize=(max(6, 1.1 * len(summary) + 2), 4.6))
    axes = figure.subplots()
    order = summary["experiment"].tolist()
    colors = colors_of(order)
    positions = np.arange(len(order))
    jitter = np.random.default_rng(0)
    axes.bar(
        positions,
        summary["loss_gap_mean"],
        yerr=summary["loss_gap_std"],
        capsize=5,  # NaN std: no bar
        color=[colors[name] for name in order],
        alpha=0.6,
        label="mean ± std over seeds",
    )
    for position, experiment in zip(positions, order):
        gaps = runs.loc[runs["experiment"] == experiment, "loss_gap"]
        axes.scatter(
            position + jitter.uniform(-0.12, 0.12, len(gaps)),
            gaps,
            color="black",
            s=14,
            zorder=3,
            label="single seeds" if position == 0 else None,
        )
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xticks(positions, [name.replace("_", "\n", 1) for name in order], fontsize=7)
    axes.set_ylabel("validation loss − final train loss (nats)")
    axes.set_title(f"Generalisation gap per experiment (lower: less overfitting): {title}", fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    return figure


# ---------------------------------------------------------------- attention_maps


def plot_attention_maps(attentions: list[dict], title: str) -> Figure:
    """Last-layer, head-averaged attention of one sentence, side by side on one colour scale."""
    matrices = [np.asarray(attention["layers"][-1], dtype=float) for attention in attentions]
    tokens = attentions[0]["tokens"]
    figure = new_figure(figsize=(5.2 * len(attentions) + 1.2, 5.8))
    panels = figure.subplots(1, len(attentions), squeeze=False)[0]
    fontsize = 8 if len(tokens) <= 30 else 6 if len(tokens) <= 50 else 4
    vmax = max(matrix.max() for matrix in matrices)
    for panel, attention, matrix in zip(panels, attentions, matrices):
        image = panel.imshow(matrix, cmap="viridis", vmin=0, vmax=vmax)
        ticks = range(len(attention["tokens"]))
        panel.set_xticks(ticks, attention["tokens"], rotation=90, fontsize=fontsize)
        panel.set_yticks(ticks, attention["tokens"], fontsize=fontsize)
        panel.set_xlabel("key token (attended to)")
        panel.set_ylabel("query token")
        panel.set_title(f"{attention['experiment']} (seed {attention['seed']})", fontsize=9)
    figure.colorbar(image, ax=panels.tolist(), shrink=0.8, label="attention probability (mean over heads)")
    text = textwrap.shorten(str(attentions[0]["text"]), width=90, placeholder=" …")
    figure.suptitle(f"{title}: last-layer attention on the first validation example\n“{text}”", fontsize=9)
    return figure


# ---------------------------------------------------------------- reliability


def reliability_bins(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per equal-width confidence bin: examples, mean confidence and accuracy of the top class."""
    confidence = predictions["probability"].to_numpy(dtype=float)
    correct = (predictions["prediction"].to_numpy() == predictions["label"].to_numpy()).astype(float)
    # Bin b holds confidences in (b/B, (b+1)/B]; a confidence of exactly 0 joins the first bin.
    bins = np.clip(np.ceil(confidence * RELIABILITY_BINS).astype(int) - 1, 0, RELIABILITY_BINS - 1)
    frame = pd.DataFrame({"bin": bins, "confidence": confidence, "correct": correct})
    table = frame.groupby("bin").agg(
        examples=("correct", "size"), confidence=("confidence", "mean"), accuracy=("correct", "mean")
    )
    return table.reindex(range(RELIABILITY_BINS))


def plot_reliability(pooled: dict[str, pd.DataFrame], ece: dict[str, float], title: str) -> Figure:
    """Accuracy against confidence per bin (predictions pooled over seeds), with the share of examples per bin."""
    figure = new_figure(figsize=(6.4, 6))
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    colors = colors_of(pooled)
    edges = np.linspace(0, 1, RELIABILITY_BINS + 1)
    width = 1 / RELIABILITY_BINS / (len(pooled) + 1)
    top.plot([0, 1], [0, 1], color="black", linestyle=":", linewidth=1, label="perfect calibration")
    for offset, (experiment, predictions) in enumerate(pooled.items()):
        table = reliability_bins(predictions)
        label = f"{experiment} (ECE {ece[experiment]:.3f})" if pd.notna(ece.get(experiment)) else experiment
        top.plot(table["confidence"], table["accuracy"], marker="o", color=colors[experiment], label=label)
        share = table["examples"].fillna(0) / len(predictions)
        bottom.bar(edges[:-1] + width * (offset + 0.5), share, width=width, align="edge", color=colors[experiment])
    top.set_ylabel("accuracy in bin")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_title(f"Reliability ({RELIABILITY_BINS} equal-width bins, seeds pooled): {title}", fontsize=10)
    top.grid(alpha=0.3)
    top.legend(fontsize=8, loc="upper left")
    bottom.set_xticks(edges[::3])
    bottom.set_xlabel("confidence (probability of the predicted class)")
    bottom.set_ylabel("share of\nexamples")
    bottom.grid(axis="y", alpha=0.3)
    return figure


# ---------------------------------------------------------------- attention_entropy


def plot_attention_entropy(diagnostics: pd.DataFrame, order: list[str], title: str) -> Figure:
    """Per layer: mean attention entropy and kept fraction over seeds, one line per experiment."""
    from matplotlib.ticker import MaxNLocator

    figure = new_figure(figsize=(10, 4.2))
    panels = figure.subplots(1, 2)
    colors = colors_of(order)
    for panel, (column, label) in zip(
        panels, (("attention_entropy", "attention entropy (nats)"), ("kept_fraction", "fraction of keys kept"))
    ):
        for experiment in order:
            rows = diagnostics[(diagnostics["experiment"] == experiment)].dropna(subset=[column])
            if rows.empty:
                continue
            per_layer = rows.groupby("layer")[column].agg(["mean", "min", "max"])
            panel.plot(per_layer.index + 1, per_layer["mean"], marker="o", color=colors[experiment], label=experiment)
            panel.fill_between(
                per_layer.index + 1,
                per_layer["min"],
                per_layer["max"],
                color=colors[experiment],
                alpha=0.15,
                linewidth=0,
            )
        panel.set_xlabel("encoder layer")
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))
        panel.set_ylabel(label)
        panel.grid(alpha=0.3)
    panels[1].set_ylim(0, 1.05)
    panels[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    figure.suptitle(f"Attention per layer on the validation set (mean over seeds; band: min–max): {title}", fontsize=10)
    return figure


# ---------------------------------------------------------------- flops


def plot_flops_breakdown(flops: pd.DataFrame, model: str) -> Figure:
    """Stacked per-component forward FLOPs (ideal sparse view) per experiment, one panel per n."""
    forward = flops[flops["pass"] == "forward"]
    ideal = forward[forward["view"] == "ideal_sparse"]
    executed = forward[(forward["view"] == "as_executed") & (forward["component"] == "total")]
    experiments = forward.drop_duplicates("experiment").assign(sparsity=lambda f: pd.to_numeric(f["sparsity"]))
    order = experiments.sort_values(["sparsity", "experiment"], na_position="last")["experiment"].tolist()
    seq_lens = sorted(forward["seq_len"].unique())
    columns = min(2, len(seq_lens))
    rows = int(np.ceil(len(seq_lens) / columns))
    figure = new_figure(figsize=(max(5.2, 0.55 * len(order) + 2) * columns, 3.8 * rows + 0.8))
    panels = figure.subplots(rows, columns, squeeze=False).ravel()
    positions = np.arange(len(order))
    component_colors = dict(zip(FLOPS_COMPONENTS, PALETTE))
    for panel, seq_len in zip(panels, seq_lens):
        bottom = np.zeros(len(order))
        at_length = ideal[ideal["seq_len"] == seq_len]
        for component, label in FLOPS_COMPONENTS.items():
            if component not in set(ideal["component"]):
                continue
            of_component = at_length[at_length["component"] == component].set_index("experiment")
            gflops = of_component["flops"].reindex(order).fillna(0).to_numpy() / 1e9
            panel.bar(positions, gflops, bottom=bottom, color=component_colors[component], label=label)
            bottom += gflops
        executed_total = executed[executed["seq_len"] == seq_len].set_index("experiment")["flops"].reindex(order) / 1e9
        panel.scatter(
            positions,
            executed_total,
            marker="_",
            s=600,
            linewidths=2.5,
            color="black",
            zorder=3,
            label="as executed total (top-k still computes the full QKᵀ)",
        )
        reductions = at_length[at_length["component"] == "total"].set_index("experiment")["reduction"].reindex(order)
        heights = np.fmax(bottom, executed_total.fillna(0).to_numpy())  # above the stack and the mark
        for position, height, reduction in zip(positions, heights, reductions):
            if pd.notna(reduction) and reduction > 0:
                panel.annotate(
                    f"−{reduction:.1%}",
                    (position, height),
                    textcoords="offset points",
                    xytext=(0, 4),
                    ha="center",
                    fontsize=7,
                )
            elif pd.isna(reduction):  # adaptive normalisers keep a data-dependent number of keys
                panel.annotate("adaptive:\nno fixed\nkept count", (position, height / 2), ha="center", fontsize=6)
        panel.set_title(f"n = {seq_len} tokens", fontsize=9)
        panel.set_ylabel("GFLOPs per layer (forward)")
        panel.set_xticks(positions, [name.replace("_", "\n") for name in order], fontsize=6)
        panel.set_ylim(0, np.nanmax(heights) * 1.15 if len(heights) else 1)
        panel.grid(axis="y", alpha=0.3)
    for unused in panels[len(seq_lens) :]:
        unused.set_visible(False)
    handles, labels = panels[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=4, fontsize=7, markerscale=0.5)
    figure.suptitle(
        f"{model}: FLOPs per encoder layer and sequence by component (ideal sparse kernel; labels: reduction vs dense)",
        fontsize=10,
    )
    return figure


# ---------------------------------------------------------------- choosing runs to show


def most_sparse(summary: pd.DataFrame, baseline: str, pattern: str | None = None) -> str | None:
    """The experiment with the highest (configured or measured) sparsity that is sparse at evaluation,
    optionally of one pattern; None when there is none."""
    candidates = summary[(summary["experiment"] != baseline) & ~summary.apply(is_control, axis=1)]
    if pattern is not None:
        candidates = candidates[candidates["pattern"] == pattern]
    candidates = candidates.assign(effective=[effective_sparsity(row) for _, row in candidates.iterrows()])
    candidates = candidates.dropna(subset=["effective"])
    if candidates.empty:
        return None
    return candidates.sort_values(["effective", "experiment"], ascending=[False, True])["experiment"].iloc[0]


def first_seed_run(run_folders: dict, experiment: str) -> Path | None:
    seeds = sorted(seed for name, seed in run_folders if name == experiment)
    return run_folders[(experiment, seeds[0])] if seeds else None


# ---------------------------------------------------------------- entry point


def save_figure(figure: Figure, out_dir: Path, name: str) -> list[Path]:
    paths = []
    for extension in FIGURE_FORMATS:
        path = out_dir / f"{name}.{extension}"
        path.parent.mkdir(parents=True, exist_ok=True)
        # No creation date in PDFs, so the same results give byte-identical files.
        metadata = {"CreationDate": None} if extension == "pdf" else {}
        figure.savefig(path, dpi=DPI, metadata=metadata)
        paths.append(path)
    return paths


def task_model_drawers(
    task: str, model: str, summary: pd.DataFrame, runs: pd.DataFrame, run_folders: dict, baseline: str
) -> dict[str, Callable[[], Figure]]:
    """The six per-(task, model) figures, each a function that draws it (or its placeholder)."""
    title = f"{task} · {model}"
    if summary.empty:
        missing = f"No finished runs of task {task} with model {model} were given."
        return {
            name: (lambda name=name: placeholder_figure(f"{name.replace('_', ' ')}: {title}", missing))
            for name in FIGURES_PER_TASK_MODEL
        }
    order = summary["experiment"].tolist()
    sparse = most_sparse(summary, baseline)
    sparse_topk = most_sparse(summary, baseline, "topk") or sparse
    loaded: dict[str, pd.DataFrame] = {}

    def histories() -> pd.DataFrame:
        frames = [
            read_history(folder).assign(experiment=name, seed=seed) for (name, seed), folder in run_folders.items()
        ]
        return pd.concat(frames, ignore_index=True)

    def loss_curves() -> Figure:
        return plot_validation_loss_curves(histories(), order, title)

    def attention_maps() -> Figure:
        chosen = [first_seed_run(run_folders, name) for name in dict.fromkeys([baseline, sparse]) if name]
        attentions = [read_attention(folder) for folder in chosen if folder is not None]
        if not attentions:
            return placeholder_figure(f"Attention maps: {title}", f"No runs of {baseline} or a sparse experiment.")
        return plot_attention_maps(attentions, title)

    def reliability() -> Figure:
        for name in dict.fromkeys([baseline, sparse_topk]):
            folders = [folder for (experiment, _), folder in run_folders.items() if experiment == name]
            if name and folders:
                loaded[name] = pd.concat([read_predictions(folder) for folder in folders], ignore_index=True)
        if not loaded:
            return placeholder_figure(f"Reliability: {title}", "No predictions of the baseline or a sparse experiment.")
        ece = summary.set_index("experiment")["ece_mean"].to_dict()
        return plot_reliability(loaded, ece, title)

    def attention_entropy() -> Figure:
        rows = []
        for (name, seed), folder in run_folders.items():
            diagnostics = read_metrics(folder).get("diagnostics") or {}
            for column in ("attention_entropy", "kept_fraction"):
                for layer, value in enumerate(diagnostics.get(column) or []):
                    rows.append({"experiment": name, "seed": seed, "layer": layer, column: value})
        if not rows:
            return placeholder_figure(
                f"Attention entropy: {title}", "The runs' metrics.json hold no per-layer diagnostics."
            )
        frame = pd.DataFrame(rows).groupby(["experiment", "seed", "layer"], as_index=False).first()
        return plot_attention_entropy(frame, order, title)

    return {
        "metric_vs_sparsity": lambda: plot_metric_vs_sparsity(summary, runs, baseline),
        "validation_loss_curves": loss_curves,
        "loss_gap": lambda: plot_loss_gap(summary, runs, title),
        "attention_maps": attention_maps,
        "reliability": reliability,
        "attention_entropy": attention_entropy,
    }


def write_figures(
    tables_dir: str | Path, run_dirs: Iterable[str | Path], out_dir: str | Path, settings: dict
) -> list[Path]:
    """Draw every figure of figure_paths(settings) from tables_dir (runs, summary and flops CSVs) and the
    run folders; return the written paths.

    settings: crisp.settings.figures_settings(config): baseline, tasks, models, experiments, statistics.
    """
    tables_dir, out_dir = Path(tables_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    baseline = settings["baseline"]
    runs = pd.read_csv(tables_dir / "runs.csv")
    summary = pd.read_csv(tables_dir / "summary.csv")
    flops = pd.read_csv(tables_dir / "flops.csv")
    run_folders: dict[tuple, Path] = {}
    for run_dir in map(Path, run_dirs):
        metrics = read_metrics(run_dir)
        run_folders[(metrics["task"], metrics["model_slug"], metrics["experiment"], int(metrics["seed"]))] = run_dir

    paths = []
    pooled_path = tables_dir / "pooled.csv"
    pooled = pd.read_csv(pooled_path) if pooled_path.is_file() else None
    if summary["delta_primary_mean"].notna().any():
        figure = plot_sparsity_effects(summary, runs, baseline, pooled)
    else:
        figure = placeholder_figure(
            "Sparsity effects", f"No experiment shares a seed with {baseline} in its task and model."
        )
    paths += save_figure(figure, out_dir, "sparsity_effects")

    for task in settings["tasks"]:
        for model in settings["models"]:
            slug = model_slug(model)
            of_pair = summary[(summary["task"] == task) & (summary["model_slug"] == slug)].reset_index(drop=True)
            pair_runs = runs[(runs["task"] == task) & (runs["model_slug"] == slug)]
            folders = {
                (name, seed): folder for (t, s, name, seed), folder in run_folders.items() if (t, s) == (task, slug)
            }
            for name, draw in task_model_drawers(task, model, of_pair, pair_runs, folders, baseline).items():
                paths += save_figure(draw(), out_dir, f"{task}/{slug}/{name}")

    for model in settings["models"]:
        slug = model_slug(model)
        of_model = flops[flops["model_slug"] == slug]
        figure = (
            plot_flops_breakdown(of_model, model)
            if not of_model.empty
            else placeholder_figure(
                f"FLOPs breakdown: {model}",
                f"{tables_dir / 'flops.csv'} has no rows for {model}: run `crisp flops` first.",
            )
        )
        paths += save_figure(figure, out_dir, f"flops/{slug}")
    return paths
