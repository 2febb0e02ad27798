"""Figures of the report, drawn from results/tables/ and the run folders.

Each `plot_*` function takes tables and returns a matplotlib Figure; `write_figures` (the entry
point of `crisp figures`) draws all of FIGURES and saves each as <name>.png and <name>.pdf.
A figure whose data is missing is still written, as a page that says what is missing, so the
workflow's declared outputs always exist.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # object API: no pyplot state, no display backend needed
from matplotlib.lines import Line2D

from crisp.errors import DataError
from crisp.tables import (
    PAPER_EXAMPLES,
    PAPER_REPORTED,
    SST2_VALIDATION_EXAMPLES,
    experiment_order,
    metrics_path,
    read_run,
)

FIGURES = ("accuracy_vs_sparsity", "validation_loss_curves", "loss_gap", "flops_breakdown", "attention_maps")
FORMATS = ("png", "pdf")
DPI = 150
ATTENTION_PAIR = ("dense_baseline", "aggressive_sparse")

FLOPS_COMPONENTS = {
    "qkv_projections": "Q, K, V projections",
    "qk_scores": "QKᵀ scores",
    "softmax": "softmax",
    "attention_values": "attention · V",
    "output_projection": "output projection",
    "ffn": "feed-forward network",
}
PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def experiment_colors(order: list[str]) -> dict[str, str]:
    """The same colour for an experiment in every figure."""
    return {experiment: PALETTE[position % len(PALETTE)] for position, experiment in enumerate(order)}


def sparsity_label(sparsity: float) -> str:
    return f"{sparsity * 100:.0f} %"


# ---------------------------------------------------------------- accuracy_vs_sparsity


def plot_accuracy_vs_sparsity(runs: pd.DataFrame, summary: pd.DataFrame) -> Figure:
    figure = Figure(figsize=(7, 4.6), layout="constrained")
    axes = figure.subplots()
    jitter = np.random.default_rng(0)  # spreads seeds sideways so equal accuracies stay visible

    for position, (pattern, group) in enumerate(summary.groupby("pattern", sort=False)):
        color = PALETTE[position % len(PALETTE)]
        seeds = runs[runs["pattern"] == pattern]
        axes.scatter(
            seeds["sparsity"] * 100 + jitter.uniform(-0.8, 0.8, len(seeds)), seeds["validation_accuracy"] * 100,
            color=color, alpha=0.35, s=16, label=f"{pattern}: single seeds",
        )
        # A single seed has no std (NaN): matplotlib then draws the mean without a bar.
        axes.errorbar(
            group["sparsity"] * 100, group["validation_accuracy_mean"] * 100,
            yerr=group["validation_accuracy_std"] * 100, color=color, marker="o", capsize=4,
            label=f"{pattern}: mean ± std over seeds",
        )

    for experiment, sparsity, accuracy in PAPER_REPORTED:
        axes.annotate(f"{accuracy:.2f}", (sparsity * 100, accuracy), textcoords="offset points", xytext=(8, 4), fontsize=8)
    axes.scatter(
        [sparsity * 100 for _, sparsity, _ in PAPER_REPORTED], [accuracy for _, _, accuracy in PAPER_REPORTED],
        marker="*", s=180, color="black", zorder=5, label=f"paper: DistilBERT, SST-2 ({PAPER_EXAMPLES} of {SST2_VALIDATION_EXAMPLES} examples)",
    )

    axes.set_xlabel("attention sparsity (% of scores masked per query)")
    axes.set_ylabel("validation accuracy (%)")
    described = " / ".join(sorted({f"{row.model} on {row.dataset}" for row in runs.itertuples()}))
    axes.set_title(f"Validation accuracy vs attention sparsity\n{described}", fontsize=11)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return figure


# ---------------------------------------------------------------- validation_loss_curves


def plot_validation_loss_curves(histories: pd.DataFrame, order: list[str], show_train: bool = True) -> Figure:
    """Mean over seeds per step, band = min-max over seeds; train loss dashed."""
    figure = Figure(figsize=(9.5, 4.6), layout="constrained")
    axes = figure.subplots()
    colors = experiment_colors(order)

    for experiment in order:
        history = histories[histories["experiment"] == experiment]
        if history.empty:
            continue
        n_seeds = history["seed"].nunique()
        validation = history.dropna(subset=["validation_loss"]).groupby("step")["validation_loss"].agg(["mean", "min", "max"])
        axes.plot(validation.index, validation["mean"], color=colors[experiment], marker=".", label=f"{experiment} ({n_seeds} seeds)")
        axes.fill_between(validation.index, validation["min"], validation["max"], color=colors[experiment], alpha=0.2, linewidth=0)
        if show_train:
            train = history.dropna(subset=["train_loss"]).groupby("step")["train_loss"].mean()
            axes.plot(train.index, train.values, color=colors[experiment], linestyle="--", alpha=0.7)

    styles = [
        Line2D([], [], color="grey", marker=".", label="validation loss (mean; band: min–max over seeds)"),
        Line2D([], [], color="grey", linestyle="--", label="train loss (mean over seeds)"),
    ]
    # Both legends sit right of the axes so they never hide a curve.
    experiments_legend = axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), title="experiment", title_fontsize=8)
    axes.add_artist(experiments_legend)
    axes.legend(handles=styles if show_train else styles[:1], fontsize=8, loc="lower left", bbox_to_anchor=(1.02, 0))
    axes.set_xlabel("training step (optimizer updates)")
    axes.set_ylabel("cross-entropy loss (nats)")
    axes.set_title("Validation loss during fine-tuning")
    axes.grid(alpha=0.3)
    return figure


# ---------------------------------------------------------------- loss_gap


def plot_loss_gap(runs: pd.DataFrame, summary: pd.DataFrame) -> Figure:
    figure = Figure(figsize=(7, 4.6), layout="constrained")
    axes = figure.subplots()
    order = summary["experiment"].tolist()
    colors = experiment_colors(order)
    positions = np.arange(len(order))
    jitter = np.random.default_rng(0)

    axes.bar(
        positions, summary["loss_gap_mean"], yerr=summary["loss_gap_std"], capsize=5,  # NaN std: no bar
        color=[colors[experiment] for experiment in order], alpha=0.6, label="mean ± std over seeds",
    )
    for position, experiment in zip(positions, order):
        gaps = runs.loc[runs["experiment"] == experiment, "loss_gap"]
        axes.scatter(
            position + jitter.uniform(-0.12, 0.12, len(gaps)), gaps, color="black", s=16, zorder=3,
            label="single seeds" if position == 0 else None,
        )
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xticks(
        positions, [f"{row.experiment}\n{sparsity_label(row.sparsity)} sparse" for row in summary.itertuples()], fontsize=8
    )
    axes.set_ylabel("validation loss − final train loss (nats)")
    axes.set_title("Generalisation gap per experiment (lower: less overfitting)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    return figure


# ---------------------------------------------------------------- flops_breakdown


def plot_flops_breakdown(flops: pd.DataFrame) -> Figure:
    """Stacked per-component forward FLOPs (ideal sparse view) per experiment, one panel per n."""
    forward = flops[flops["pass"] == "forward"]
    ideal = forward[forward["view"] == "ideal_sparse"]
    executed = forward[(forward["view"] == "as_executed") & (forward["component"] == "total")]
    order = experiment_order(forward)
    seq_lens = sorted(forward["seq_len"].unique())
    columns = min(2, len(seq_lens))
    rows = int(np.ceil(len(seq_lens) / columns))

    figure = Figure(figsize=(5.2 * columns, 3.8 * rows + 0.8), layout="constrained")
    panels = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    positions = np.arange(len(order))
    component_colors = dict(zip(FLOPS_COMPONENTS, PALETTE))

    for panel, seq_len in zip(panels, seq_lens):
        bottom = np.zeros(len(order))
        at_length = ideal[ideal["seq_len"] == seq_len]
        for component, label in FLOPS_COMPONENTS.items():
            rows_of_component = at_length[at_length["component"] == component].set_index("experiment")
            gflops = rows_of_component["flops"].reindex(order).fillna(0).to_numpy() / 1e9
            panel.bar(positions, gflops, bottom=bottom, color=component_colors[component], label=label)
            bottom += gflops
        executed_total = executed[executed["seq_len"] == seq_len].set_index("experiment")["flops"].reindex(order) / 1e9
        panel.scatter(
            positions, executed_total, marker="_", s=900, linewidths=2.5, color="black", zorder=3,
            label="as executed total (top-k still computes the full QKᵀ)",
        )
        reductions = at_length[at_length["component"] == "total"].set_index("experiment")["reduction"].reindex(order)
        # Above whichever is higher, the stack or the as-executed mark, so neither hides the label.
        label_heights = np.fmax(bottom, executed_total.to_numpy())
        for position, height, reduction in zip(positions, label_heights, reductions):
            if pd.notna(reduction) and reduction > 0:
                panel.annotate(f"−{reduction:.1%}", (position, height), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=7)
        panel.set_title(f"n = {seq_len} tokens")
        panel.set_ylabel("GFLOPs per layer (forward)")
        panel.set_xticks(positions, [name.replace("_", "\n") for name in order], fontsize=7)
        panel.margins(y=0.12)
        panel.grid(axis="y", alpha=0.3)
    for unused in panels[len(seq_lens):]:
        unused.set_visible(False)

    handles, labels = panels[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=4, fontsize=8, markerscale=0.5)
    figure.suptitle("FLOPs per encoder layer and sequence, by component (ideal sparse kernel; labels: reduction vs dense)")
    return figure


# ---------------------------------------------------------------- attention_maps


def read_attention(run_dir: Path) -> dict:
    """attention.json of a run folder, checked: one square matrix per layer, sized like tokens."""
    path = run_dir / "attention.json"
    attention = json.loads(path.read_text())
    for key in ("experiment", "seed", "text", "tokens", "layers"):
        if key not in attention:
            raise DataError(f"{path} has no key '{key}'; rerun `crisp train` for this run to rewrite it.")
    size = len(attention["tokens"])
    for layer, matrix in enumerate(attention["layers"]):
        if np.shape(matrix) != (size, size):
            raise DataError(f"{path}: layer {layer} is {np.shape(matrix)}, expected {size} x {size} (one row and column per token).")
    if not attention["layers"]:
        raise DataError(f"{path} has an empty 'layers' list.")
    return attention


def choose_attention_runs(attentions: dict[tuple[str, int], dict], runs: pd.DataFrame) -> list[dict]:
    """dense_baseline vs aggressive_sparse, else the lowest- vs highest-sparsity experiment; first seed."""
    available = [experiment for experiment in experiment_order(runs) if any(key[0] == experiment for key in attentions)]
    if not available:
        return []
    pair = ATTENTION_PAIR if all(name in available for name in ATTENTION_PAIR) else (available[0], available[-1])
    chosen = []
    for experiment in dict.fromkeys(pair):  # one panel when both ends are the same experiment
        seed = min(seed for name, seed in attentions if name == experiment)
        chosen.append(attentions[(experiment, seed)])
    return chosen


def plot_attention_maps(attentions: list[dict]) -> Figure:
    """Last-layer, head-averaged attention of one sentence, side by side on one colour scale."""
    matrices = [np.asarray(attention["layers"][-1], dtype=float) for attention in attentions]
    tokens = attentions[0]["tokens"]
    figure = Figure(figsize=(5.6 * len(attentions) + 1.2, 6.2), layout="constrained")
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
        panel.set_title(f"{attention['experiment']} (seed {attention['seed']})")
    figure.colorbar(image, ax=panels.tolist(), shrink=0.8, label="attention probability (mean over heads)")
    text = textwrap.shorten(attentions[0]["text"], width=90, placeholder=" …")
    figure.suptitle(f"Last-layer attention on the first validation sentence:\n“{text}”", fontsize=10)
    return figure


# ---------------------------------------------------------------- missing data


def placeholder_figure(title: str, message: str) -> Figure:
    figure = Figure(figsize=(7, 3))
    figure.text(0.5, 0.6, title, ha="center", fontsize=12, weight="bold")
    figure.text(0.5, 0.4, message, ha="center", fontsize=10, wrap=True)
    return figure


# ---------------------------------------------------------------- entry point


def save_figure(figure: Figure, out_dir: Path, name: str) -> list[Path]:
    paths = []
    for extension in FORMATS:
        path = out_dir / f"{name}.{extension}"
        # No creation date in PDFs, so the same results give byte-identical files.
        metadata = {"CreationDate": None} if extension == "pdf" else {}
        figure.savefig(path, dpi=DPI, metadata=metadata)
        paths.append(path)
    return paths


def read_run_artifacts(run_dirs: Iterable[str | Path]) -> tuple[pd.DataFrame, dict[tuple[str, int], dict]]:
    """history.csv of every run (with experiment and seed columns) and attention.json by (experiment, seed)."""
    histories, attentions = [], {}
    for run in run_dirs:
        run_dir = metrics_path(run).parent
        identity = read_run(run_dir)
        key = (identity["experiment"], identity["seed"])
        if (run_dir / "history.csv").exists():
            history = pd.read_csv(run_dir / "history.csv")
            missing = {"step", "train_loss", "validation_loss"} - set(history.columns)
            if missing:
                raise DataError(f"{run_dir / 'history.csv'} lacks column(s) {sorted(missing)}.")
            histories.append(history.assign(experiment=key[0], seed=key[1]))
        if (run_dir / "attention.json").exists():
            attentions[key] = read_attention(run_dir)
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame(columns=["experiment", "seed", "step"])
    return history, attentions


def write_figures(tables_dir: str | Path, run_dirs: Iterable[str | Path], out_dir: str | Path) -> list[Path]:
    """Draw every figure in FIGURES from tables_dir (runs, summary, flops CSVs) and the run folders."""
    tables_dir, out_dir = Path(tables_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = pd.read_csv(tables_dir / "runs.csv")
    summary = pd.read_csv(tables_dir / "summary.csv")
    flops = pd.read_csv(tables_dir / "flops.csv")
    histories, attentions = read_run_artifacts(run_dirs)
    attention_runs = choose_attention_runs(attentions, runs)

    drawers: dict[str, Callable[[], Figure]] = {
        "accuracy_vs_sparsity": lambda: plot_accuracy_vs_sparsity(runs, summary),
        "validation_loss_curves": lambda: (
            plot_validation_loss_curves(histories, experiment_order(runs)) if not histories.empty
            else placeholder_figure("Validation loss curves", "No history.csv in the run folders.")
        ),
        "loss_gap": lambda: plot_loss_gap(runs, summary),
        "flops_breakdown": lambda: (
            plot_flops_breakdown(flops) if not flops.empty
            else placeholder_figure("FLOPs breakdown", f"{tables_dir / 'flops.csv'} has no rows: run `crisp profile` first.")
        ),
        "attention_maps": lambda: (
            plot_attention_maps(attention_runs) if attention_runs
            else placeholder_figure("Attention maps", "No attention.json in the run folders.")
        ),
    }
    paths = []
    for name in FIGURES:
        paths += save_figure(drawers[name](), out_dir, name)
    return paths
