"""Tables and figures from run folders written by crisp.runs and FLOPs reports written by crisp.flops.

The fixture is a small matrix: 2 tasks (SST-2 with accuracy, CoLA with Matthews correlation) x 2 models
x 3 experiments (dense baseline, top-k 80 %, adaptive sparsemax) x 2 seeds. Predictions nest: the first
`correct` validation examples are predicted right, so every difference can be worked out by hand.
"""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from crisp import figures, tables
from crisp import pooling as crisp_pooling
from crisp.errors import RunFormatError
from crisp.flops import Architecture, profile_experiment
from crisp.layout import model_slug
from crisp.metrics import primary_metric
from crisp.runs import write_run

TASKS = {"sst2": {"name": "glue/sst2", "metric": "accuracy"}, "cola": {"name": "glue/cola", "metric": "mcc"}}
MODELS = ["distilbert-base-uncased", "tiny:bert"]
EXPERIMENTS = {
    "dense_baseline": {
        "pattern": "dense",
        "sparsity": 0.0,
        "options": {},
        "apply": "train_and_eval",
        "attention_dropout": None,
    },
    "aggressive_sparse": {
        "pattern": "topk",
        "sparsity": 0.8,
        "options": {},
        "apply": "train_and_eval",
        "attention_dropout": None,
    },
    "sparsemax": {
        "pattern": "sparsemax",
        "sparsity": None,
        "options": {},
        "apply": "train_and_eval",
        "attention_dropout": None,
    },
}
SEEDS = (0, 1)
EXAMPLES = 60
SETTINGS = {
    "baseline": "dense_baseline",
    "tasks": TASKS,
    "models": MODELS,
    "experiments": EXPERIMENTS,
    "statistics": {
        "bootstrap_resamples": 200,
        "bootstrap_seed": 0,
        "confidence": 0.95,
        "power": 0.8,
        "target_difference": 1.0,
    },
}


def correct_count(task, model, experiment, seed):
    """Each (task, model) has its own baseline level, so a comparison across pairs would show.

    Only top-k on SST-2 with DistilBERT gains clearly (+12 examples on both seeds); the rest move by 0-1,
    differently on each seed.
    """
    base = {("sst2", MODELS[0]): 40, ("sst2", MODELS[1]): 30, ("cola", MODELS[0]): 45, ("cola", MODELS[1]): 35}
    gain = {
        "dense_baseline": 0,
        "aggressive_sparse": 12 if (task, model) == ("sst2", MODELS[0]) else seed,
        "sparsemax": 1 - seed,
    }
    return base[(task, model)] + 2 * seed + gain[experiment]


def primary_of(task, model, experiment, seed):
    labels = np.arange(EXAMPLES) % 2
    correct = correct_count(task, model, experiment, seed)
    return primary_metric(TASKS[task]["metric"], labels, np.where(np.arange(EXAMPLES) < correct, labels, 1 - labels))


def make_run(root, task, model, experiment, seed):
    spec = EXPERIMENTS[experiment]
    correct = correct_count(task, model, experiment, seed)
    labels = np.arange(EXAMPLES) % 2
    predictions = np.where(np.arange(EXAMPLES) < correct, labels, 1 - labels)
    confidence = np.where(np.arange(EXAMPLES) % 3 == 0, 0.95, 0.7)
    probabilities = np.where(predictions[:, None] == np.arange(2), confidence[:, None], 1 - confidence[:, None])
    metric = TASKS[task]["metric"]
    validation_loss = 0.5 - 0.002 * correct
    kept = {"dense": 1.0, "topk": 0.2, "sparsemax": 0.35}[spec["pattern"]]
    metrics = {
        "task": task,
        "dataset": TASKS[task]["name"],
        "model": model,
        "model_slug": model_slug(model),
        "experiment": experiment,
        "seed": seed,
        "pattern": spec["pattern"],
        "sparsity": spec["sparsity"],
        "apply": spec["apply"],
        "attention_dropout": spec["attention_dropout"],
        "metric": metric,
        "validation": {
            "accuracy": correct / EXAMPLES,
            "correct": correct,
            "total": EXAMPLES,
            "loss": validation_loss,
            "mcc": primary_metric("mcc", labels, predictions),
            "f1": primary_metric("f1", labels, predictions),
            "primary": primary_metric(metric, labels, predictions),
            "nll": validation_loss,
            "ece": 0.05,
            "brier": 0.3,
        },
        "diagnostics": {
            "attention_entropy": [1.5 * kept + 0.1 * layer for layer in range(2)],
            "kept_fraction": [kept, kept],
        },
        "train_loss": 0.2,
        "train_loss_mean": 0.4,
        "steps": 30,
        "epochs": 3,
        "resumed_from_step": None,
        "wall_time_s": 12.5,
        "train_examples_per_s": 40.0 + seed,
        "train_flops": 1e12,
        "achieved_flops_per_s": 8e10,
        "peak_memory_mb": 300.0,
        "mfu": None,
        "device": "cpu",
        "precision": "fp32",
        "settings": {},
        "versions": {},
        "git_commit": None,
        "command": "crisp train",
    }
    history = [
        {
            "step": step,
            "epoch": step / 10,
            "train_loss": 0.6 - 0.01 * step,
            "validation_loss": validation_loss + 0.1 / step,
            "validation_accuracy": correct / EXAMPLES,
            "validation_primary": metrics["validation"]["primary"],
        }
        for step in (10, 20, 30)
    ]
    frame = pd.DataFrame(
        {
            "index": range(EXAMPLES),
            "label": labels,
            "prediction": predictions,
            "probability": confidence,
            "prob_0": probabilities[:, 0],
            "prob_1": probabilities[:, 1],
        }
    )
    tokens = ["[CLS]", "a", "gripping", "film", "[SEP]"]
    layer = np.random.default_rng(seed).dirichlet(np.ones(len(tokens)), size=len(tokens)).tolist()
    attention = {
        "experiment": experiment,
        "seed": seed,
        "text": "a gripping film",
        "tokens": tokens,
        "layers": [layer, layer],
    }
    run_dir = root / "runs" / task / model_slug(model) / experiment / f"seed{seed}"
    write_run(run_dir, metrics, history, frame, attention)
    return run_dir


DISTILBERT = Architecture(layers=6, hidden=768, heads=12, intermediate=3072)
TINY = Architecture(layers=2, hidden=32, heads=2, intermediate=64)


def make_flops(root, model, experiment):
    spec = EXPERIMENTS[experiment]
    architecture = DISTILBERT if model == MODELS[0] else TINY
    report = profile_experiment(
        architecture, experiment, spec["pattern"], spec["sparsity"], [64, 512], model_name=model
    )
    path = root / "flops" / model_slug(model) / f"{experiment}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))
    return path


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """(run folders, FLOPs files, tables folder) of the whole matrix, tables written once."""
    root = tmp_path_factory.mktemp("matrix")
    run_dirs = [
        make_run(root, task, model, experiment, seed)
        for task in TASKS
        for model in MODELS
        for experiment in EXPERIMENTS
        for seed in SEEDS
    ]
    flops_paths = [make_flops(root, model, experiment) for model in MODELS for experiment in EXPERIMENTS]
    paths = tables.write_tables(run_dirs, flops_paths, root / "tables", SETTINGS)
    return run_dirs, flops_paths, root / "tables", paths


@pytest.fixture(scope="module")
def summary(matrix):
    return pd.read_csv(matrix[2] / "summary.csv")


def test_write_tables_writes_every_table(matrix):
    *_, tables_dir, paths = matrix
    assert sorted(path.name for path in paths) == sorted(tables.TABLE_FILES)
    assert all(path.parent == tables_dir and path.stat().st_size > 0 for path in paths)
    assert len(pd.read_csv(tables_dir / "runs.csv")) == len(TASKS) * len(MODELS) * len(EXPERIMENTS) * len(SEEDS)


def test_summary_has_one_row_per_task_model_experiment(summary):
    assert list(summary.columns) == tables.SUMMARY_COLUMNS
    keys = list(zip(summary["task"], summary["model"], summary["experiment"]))
    assert sorted(keys) == sorted((t, m, e) for t in TASKS for m in MODELS for e in EXPERIMENTS)
    assert (summary["n_seeds"] == 2).all()
    assert dict(zip(summary["task"], summary["metric"])) == {"sst2": "accuracy", "cola": "mcc"}
    # Within a (task, model) the baseline comes first and the adaptive pattern, with no sparsity set, last.
    first = summary[(summary["task"] == "sst2") & (summary["model"] == MODELS[0])]
    assert first["experiment"].tolist() == ["dense_baseline", "aggressive_sparse", "sparsemax"]
    row = first.set_index("experiment").loc["aggressive_sparse"]
    assert row["primary_mean"] == pytest.approx((52 + 54) / 2 / EXAMPLES)  # SST-2 primary = accuracy
    assert row["kept_fraction_mean"] == pytest.approx(0.2) and row["ece_mean"] == pytest.approx(0.05)
    assert row["loss_gap_mean"] == pytest.approx(row["validation_loss_mean"] - 0.2)


def test_comparisons_stay_within_task_and_model(summary):
    for row in summary.itertuples():
        if row.experiment == "dense_baseline":
            assert pd.isna(row.delta_primary_mean) and row.paired_test == "baseline"
            continue
        expected = np.mean(
            [
                primary_of(row.task, row.model, row.experiment, seed)
                - primary_of(row.task, row.model, "dense_baseline", seed)
                for seed in SEEDS
            ]
        )
        assert row.delta_primary_mean == pytest.approx(expected)
        # Both intervals hold the mean difference; resamples and seed come from the settings.
        assert row.delta_primary_low <= row.delta_primary_mean <= row.delta_primary_high
        assert row.sampling_low <= row.delta_primary_mean <= row.sampling_high
        assert (row.bootstrap_resamples, row.bootstrap_seed, row.confidence) == (200, 0, 0.95)
        assert row.paired_seeds == 2 and row.validation_examples == EXAMPLES and row.t_df == 1
        assert row.paired_test == "paired t-test, n=2"
        assert row.sign_flip_test == "exact sign-flip permutation, n=2" and row.sign_flip_min_p == 0.5
        # One family per task and model: its two experiments against that baseline.
        assert (row.family, row.family_size) == (f"{row.task} / {row.model}", 2)
        assert row.power == 0.8 and not row.seed_sets_differ


def test_mcnemar_is_one_test_per_seed(summary):
    row = summary.set_index(["task", "model", "experiment"]).loc[("sst2", MODELS[0], "aggressive_sparse")]
    # Nested predictions: 12 examples gained on each seed, none lost; each seed tested on its own.
    assert (row["mcnemar_gained_per_seed"], row["mcnemar_lost_per_seed"]) == ("12 12", "0 0")
    assert row["mcnemar_rejecting_seeds"] == 2
    assert row["mcnemar_p_min"] == row["mcnemar_p_max"] == pytest.approx(2 / 2**12)


def test_minimum_detectable_difference_from_seed_spread(summary):
    rows = summary.set_index(["task", "model", "experiment"])
    # Identical differences on both seeds: no spread, so any true difference is detectable.
    assert rows.loc[("sst2", MODELS[0], "aggressive_sparse"), "minimum_detectable_difference"] == pytest.approx(0)
    assert rows.loc[("sst2", MODELS[1], "aggressive_sparse"), "minimum_detectable_difference"] > 0


def test_note_says_which_differences_are_significant(matrix, summary):
    markdown = (matrix[2] / "summary.md").read_text()
    significant = summary[summary["significant"].fillna(False).astype(bool)]
    assert list(zip(significant["task"], significant["model"], significant["experiment"])) == [
        ("sst2", MODELS[0], "aggressive_sparse")
    ]
    assert "Significant at 5 % after Holm's correction, 1 of 8 comparisons" in markdown
    assert "aggressive_sparse on sst2 / distilbert-base-uncased (accuracy higher by 20.00 pt" in markdown
    assert "within the family of one task × model" in markdown and "Benjamini–Hochberg" in markdown
    assert "test-set sampling" in markdown and "never pooled over seeds" in markdown
    assert "200 resamples, seed 0" in markdown and "15 equal-width confidence bins" in markdown
    assert "80 % power" in markdown and "With 2 seeds (smallest p 0.5) the sign-flip test cannot reject" in markdown
    assert "+20.00 [" in markdown  # the difference with its interval, in points
    assert "Matthews correlation" in markdown


def test_latex_summary_is_booktabs_and_escaped(matrix):
    latex = (matrix[2] / "summary.tex").read_text()
    assert r"\toprule" in latex and r"\bottomrule" in latex and r"$\pm$" in latex
    assert r"aggressive\_sparse" in latex and "±" not in latex and "Δ" not in latex


def test_paper_numbers_only_for_sst2_with_distilbert(matrix, tmp_path):
    run_dirs, *_ = matrix
    assert "91.59" in (matrix[2] / "summary.md").read_text()
    elsewhere = [run for run in run_dirs if model_slug(MODELS[0]) not in str(run)]
    tables.write_tables(elsewhere, [], tmp_path, SETTINGS)
    assert "91.59" not in (tmp_path / "summary.md").read_text() and "832" not in (tmp_path / "summary.md").read_text()
    assert figures.paper_points("glue/sst2", "distilbert-base-uncased", "accuracy") == tables.PAPER_REPORTED
    assert figures.paper_points("glue/sst2", "tiny:bert", "accuracy") == ()
    assert figures.paper_points("synthetic", "distilbert-base-uncased", "accuracy") == ()
    assert figures.paper_points("glue/cola", "distilbert-base-uncased", "mcc") == ()


def test_flops_tables_per_model_and_experiment(matrix):
    *_, tables_dir, _ = matrix
    flops = pd.read_csv(tables_dir / "flops.csv")
    assert set(zip(flops["model_slug"], flops["experiment"])) == {
        (model_slug(m), e) for m in MODELS for e in EXPERIMENTS
    }
    reductions = tables.flops_reductions(flops).set_index(["model", "experiment", "seq_len"])
    topk = reductions.loc[(MODELS[0], "aggressive_sparse", 512)]
    assert topk["as_executed"] == pytest.approx(0)
    assert 0 < topk["ideal_sparse"] < topk["paper_accounting"] == pytest.approx(20.26, abs=0.01)
    # An adaptive normaliser has no fixed kept count: only the as-executed view exists.
    assert pd.isna(reductions.loc[(MODELS[0], "sparsemax", 512), "ideal_sparse"])
    markdown = (tables_dir / "flops.md").read_text()
    assert f"## {MODELS[0]}" in markdown and f"## {MODELS[1]}" in markdown and "measured" in markdown


def test_corrupt_run_file_is_named(matrix, tmp_path):
    run_dirs, flops_paths, *_ = matrix
    broken = make_run(tmp_path, "sst2", MODELS[1], "dense_baseline", 0)
    (broken / "metrics.json").write_text('{"task": "sst2", "valid')
    with pytest.raises(RunFormatError, match=r"seed0/metrics\.json"):
        tables.write_tables([broken, *run_dirs[1:]], flops_paths, tmp_path / "tables", SETTINGS)

    other = make_run(tmp_path / "other", "sst2", MODELS[1], "dense_baseline", 0)
    predictions = pd.read_csv(other / "predictions.csv")
    predictions.drop(columns="prediction").to_csv(other / "predictions.csv", index=False)
    with pytest.raises(RunFormatError, match=r"seed0/predictions\.csv"):
        tables.write_tables([other], [], tmp_path / "tables", SETTINGS)


def test_corrupt_flops_file_is_named(matrix, tmp_path):
    run_dirs, *_ = matrix
    truncated = tmp_path / "flops" / "tiny-bert" / "dense_baseline.json"
    truncated.parent.mkdir(parents=True)
    truncated.write_text('{"experiment": "dense_baseline", "by_seq')
    with pytest.raises(RunFormatError, match=r"tiny-bert/dense_baseline\.json"):
        tables.write_tables(run_dirs, [truncated], tmp_path / "tables", SETTINGS)
    truncated.write_text('{"experiment": "dense_baseline"}')
    with pytest.raises(RunFormatError, match=r"tiny-bert/dense_baseline\.json: not a FLOPs report"):
        tables.write_tables(run_dirs, [truncated], tmp_path / "tables", SETTINGS)


def test_primary_metric_disagreeing_with_predictions_is_refused(tmp_path):
    run_dir = make_run(tmp_path, "sst2", MODELS[1], "dense_baseline", 0)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["validation"]["primary"] += 0.1
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(RunFormatError, match="predictions.csv gives accuracy"):
        tables.write_tables([run_dir], [], tmp_path / "tables", SETTINGS)


@pytest.fixture(scope="module")
def drawn(matrix, tmp_path_factory):
    """write_figures over the matrix at low resolution, recording every placeholder drawn."""
    run_dirs, _, tables_dir, _ = matrix
    out_dir = tmp_path_factory.mktemp("figures")
    placeholders = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(figures, "DPI", 40)
        original = figures.placeholder_figure
        patch.setattr(
            figures, "placeholder_figure", lambda title, message: placeholders.append(title) or original(title, message)
        )
        paths = figures.write_figures(tables_dir, run_dirs, out_dir, SETTINGS)
    return out_dir, paths, placeholders


def test_every_declared_figure_is_drawn_from_data(drawn):
    out_dir, paths, placeholders = drawn
    expected = figures.figure_paths(SETTINGS)
    assert sorted(str(path.relative_to(out_dir)) for path in paths) == sorted(expected)
    assert len(expected) == 2 * (1 + len(TASKS) * len(MODELS) * len(figures.FIGURES_PER_TASK_MODEL) + len(MODELS))
    for name in expected:
        header = (out_dir / name).read_bytes()[:4]
        assert header == (b"\x89PNG" if name.endswith(".png") else b"%PDF")
    assert "sst2/distilbert-base-uncased/reliability.png" in expected and "flops/tiny-bert.pdf" in expected
    assert placeholders == []  # every figure had data to show


def test_figures_with_nothing_to_show_draw_placeholders(matrix, tmp_path, monkeypatch):
    run_dirs, *_ = matrix
    # tiny:bert on SST-2 has only its baseline (nothing to compare); tiny:roberta has no runs and no FLOPs.
    settings = {**SETTINGS, "tasks": {"sst2": TASKS["sst2"]}, "models": ["tiny:bert", "tiny:roberta"]}
    baseline_only = [run for run in run_dirs if "sst2/tiny-bert/dense_baseline" in str(run)]
    tables.write_tables(baseline_only, [], tmp_path / "tables", settings)
    placeholders = []
    original = figures.placeholder_figure
    monkeypatch.setattr(
        figures, "placeholder_figure", lambda title, message: placeholders.append(title) or original(title, message)
    )
    monkeypatch.setattr(figures, "DPI", 40)
    monkeypatch.setattr(figures, "FIGURE_FORMATS", ("png",))  # both formats are checked above
    paths = figures.write_figures(tmp_path / "tables", baseline_only, tmp_path / "figures", settings)
    assert sorted(str(path.relative_to(tmp_path / "figures")) for path in paths) == sorted(
        figures.figure_paths(settings)
    )
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in paths)
    # No comparison at all; every tiny:roberta figure; both FLOPs pages. The baseline's own figures are drawn.
    assert len(placeholders) == 1 + len(figures.FIGURES_PER_TASK_MODEL) + 2
    assert placeholders[0] == "Sparsity effects"


def test_controls_and_adaptive_patterns_are_placed_apart():
    adaptive = pd.Series(
        {"sparsity": np.nan, "kept_fraction_mean": 0.35, "apply": "train_and_eval", "attention_dropout": np.nan}
    )
    assert figures.effective_sparsity(adaptive) == pytest.approx(0.65)
    assert not figures.is_control(adaptive)
    dropout = pd.Series(
        {"experiment": "attention_dropout", "sparsity": 0.0, "apply": "train_and_eval", "attention_dropout": 0.3}
    )
    train_only = pd.Series(
        {"experiment": "topk_train_only", "sparsity": 0.8, "apply": "train", "attention_dropout": np.nan}
    )
    assert figures.is_control(dropout) and figures.is_control(train_only)
    assert figures.control_label(dropout) == "attention_dropout (attention dropout 0.3)"
    summary = pd.DataFrame(
        [
            {
                "experiment": "dense_baseline",
                "pattern": "dense",
                "sparsity": 0.0,
                "kept_fraction_mean": 1.0,
                "apply": "train_and_eval",
                "attention_dropout": np.nan,
            },
            {
                "experiment": "topk_50",
                "pattern": "topk",
                "sparsity": 0.5,
                "kept_fraction_mean": 0.5,
                "apply": "train_and_eval",
                "attention_dropout": np.nan,
            },
            {**train_only.to_dict(), "pattern": "topk", "kept_fraction_mean": 1.0},
            {
                "experiment": "sparsemax",
                "pattern": "sparsemax",
                "sparsity": np.nan,
                "kept_fraction_mean": 0.3,
                "apply": "train_and_eval",
                "attention_dropout": np.nan,
            },
        ]
    )
    # The most sparse at evaluation is the adaptive one (70 % measured); the train-only control is never chosen.
    assert figures.most_sparse(summary, "dense_baseline") == "sparsemax"
    assert figures.most_sparse(summary, "dense_baseline", "topk") == "topk_50"


def test_reliability_bins_are_equal_width():
    predictions = pd.DataFrame(
        {"probability": [0.5, 0.52, 0.99, 1.0, 0.7], "prediction": [1, 0, 1, 1, 0], "label": [1, 1, 1, 0, 0]}
    )
    table = figures.reliability_bins(predictions)
    assert len(table) == figures.RELIABILITY_BINS == 15
    assert table.loc[7, "examples"] == 2 and table.loc[7, "accuracy"] == 0.5  # (7/15, 8/15] holds 0.5 and 0.52
    assert table.loc[14, "examples"] == 2 and table.loc[14, "confidence"] == pytest.approx(0.995)
    assert table.loc[10, "accuracy"] == 1.0 and pd.isna(table.loc[0, "accuracy"])


def test_tables_figures_and_flops_reports_load_no_ml_library():
    """The tables and figures jobs only read files; torch and transformers alone take seconds to load."""
    code = (
        "import sys, crisp.tables, crisp.flops, crisp.figures\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_pooled_table_combines_an_experiment_over_tasks_and_models(matrix):
    *_, tables_dir, _ = matrix
    pooled = pd.read_csv(tables_dir / "pooled.csv").set_index("experiment")
    assert list(pooled.columns) == [column for column in crisp_pooling.POOLED_COLUMNS if column != "experiment"]
    # Accuracy (SST-2) and MCC (CoLA) differ, so effects are standardised; the SST-2 / DistilBERT top-k
    # group has the same difference on both seeds (no spread) and is left out, and said so.
    assert set(pooled.index) == {"aggressive_sparse", "sparsemax"}
    assert (pooled["scale"] == crisp_pooling.STANDARDISED).all()
    assert pooled.loc["aggressive_sparse", "groups"] == 3 and pooled.loc["sparsemax", "groups"] == 4
    assert pooled.loc["aggressive_sparse", "groups_left_out"] == "sst2 / distilbert-base-uncased"
    summary = pd.read_csv(tables_dir / "summary.csv")
    usable = summary[(summary["experiment"] == "sparsemax") & summary["t_p_value"].notna()]
    d = usable["delta_primary_mean"] / usable["delta_primary_std"]
    n = usable["paired_seeds"]
    expected = tables.stats.random_effects(d, 1 / n + d**2 / (2 * n))
    assert pooled.loc["sparsemax", "effect"] == pytest.approx(expected["effect"])
    assert pooled.loc["sparsemax", "low"] < pooled.loc["sparsemax", "effect"] < pooled.loc["sparsemax", "high"]
    markdown = (tables_dir / "pooled.md").read_text()
    assert "Paule–Mandel" in markdown and "standardised, d_z" in markdown and "Prediction interval" in markdown


def test_seed_planner_and_detectable_difference_in_the_summary(summary):
    compared = summary[summary["t_p_value"].notna()]
    for row in compared.itertuples():
        level = (1 - row.confidence) / row.family_size
        assert row.minimum_detectable_difference == pytest.approx(
            tables.stats.detectable_effect_size(row.paired_seeds, level, 0.8) * row.delta_primary_std
        )
        assert row.target_difference == 1.0
        assert row.seeds_needed == tables.stats.seeds_needed(row.delta_primary_std, 0.01, level, 0.8)


def test_crisp_plan_prints_the_seeds_needed(matrix, capsys):
    from crisp.cli import main

    *_, tables_dir, _ = matrix
    assert main(["plan", "--tables", str(tables_dir), "--target", "5"]) == 0
    printed = capsys.readouterr().out
    assert "seeds for 5 pt at 80 % power" in printed and "aggressive_sparse" in printed
    summary = pd.read_csv(tables_dir / "summary.csv")
    row = summary[(summary["task"] == "cola") & (summary["experiment"] == "sparsemax")].iloc[0]
    needed = tables.stats.seeds_needed(row["delta_primary_std"], 0.05, 0.05 / 2, 0.8)
    assert f"| {needed:.0f} " in printed


def test_metric_vs_sparsity_places_points_at_the_measured_sparsity(monkeypatch):
    """block_topk at 80 % on 13-token sentences keeps every key: it is drawn at 0 %, not at 80 %."""
    base = {"task": "sst2", "dataset": "glue/sst2", "model": "tiny:bert", "metric": "accuracy", "confidence": 0.95}
    rows = [
        {**base, "experiment": "dense_baseline", "pattern": "dense", "sparsity": 0.0, "measured_sparsity": 0.0},
        {**base, "experiment": "topk_80", "pattern": "topk", "sparsity": 0.8, "measured_sparsity": 0.77},
        {**base, "experiment": "block_80", "pattern": "block_topk", "sparsity": 0.8, "measured_sparsity": 0.0},
    ]
    summary = pd.DataFrame(rows).assign(
        apply="train_and_eval",
        attention_dropout=np.nan,
        primary_mean=[0.9, 0.91, 0.9],
        delta_primary_low=[np.nan, -0.01, -0.01],
        delta_primary_high=[np.nan, 0.03, 0.01],
    )
    runs = pd.DataFrame({"experiment": ["dense_baseline"], "primary": [0.9]})
    figure = figures.plot_metric_vs_sparsity(summary, runs, "dense_baseline")
    lines = {line.get_label(): line.get_xdata() for line in figure.axes[0].lines}
    assert list(lines["topk (mean over seeds)"]) == pytest.approx([77.0])
    assert list(lines["block_topk (mean over seeds)"]) == pytest.approx([0.0])
    assert figures.sparsity_label(summary.iloc[2]) == "80 % set, 0 % measured"


def test_sparsity_effects_ends_with_the_pooled_rows(matrix, summary):
    *_, tables_dir, _ = matrix
    pooled = pd.read_csv(tables_dir / "pooled.csv")
    figure = figures.plot_sparsity_effects(summary, pd.read_csv(tables_dir / "runs.csv"), "dense_baseline", pooled)
    bottom = figure.axes[1]
    labels = [label.get_text() for label in bottom.get_yticklabels()]
    assert labels == ["aggressive_sparse (3 groups, I² 0 %)", "sparsemax (4 groups, I² 0 %)"]
    assert "standardised" in bottom.get_xlabel()
