"""Tables and figures from fake but well-formed run folders and FLOPs rows."""

import json

import numpy as np
import pandas as pd
import pytest

from crisp import figures, tables
from crisp.flops import ROW_COLUMNS

EXPERIMENTS = {  # name -> (pattern, sparsity)
    "dense_baseline": ("dense", 0.0),
    "light_sparse": ("topk", 0.3),
    "aggressive_sparse": ("topk", 0.8),
}
EXAMPLES = 100


def write_run(root, experiment, seed, correct, validation_loss=0.3, train_loss=0.2, with_artifacts=True):
    """A run folder as crisp.train writes it; the first `correct` examples are predicted right."""
    pattern, sparsity = EXPERIMENTS[experiment]
    run_dir = root / "runs" / experiment / f"seed{seed}"
    run_dir.mkdir(parents=True)
    metrics = {
        "experiment": experiment, "seed": seed, "model": "tiny:bert", "dataset": "synthetic", "pattern": pattern, "sparsity": sparsity,
        "model": "tiny:distilbert", "dataset": "synthetic",
        "validation": {"accuracy": correct / EXAMPLES, "correct": correct, "total": EXAMPLES, "loss": validation_loss},
        "train_loss": train_loss, "train_loss_mean": train_loss + 0.2, "epochs": 3, "steps": 30,
        "wall_time_s": 12.5, "train_examples_per_s": 40.0 + seed, "device": "cpu", "precision": "fp32",
        "config": {}, "versions": {}, "git_commit": None,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    if with_artifacts:
        labels = np.arange(EXAMPLES) % 2
        predictions = np.where(np.arange(EXAMPLES) < correct, labels, 1 - labels)
        pd.DataFrame({"index": range(EXAMPLES), "label": labels, "prediction": predictions, "probability": 0.7}).to_csv(
            run_dir / "predictions.csv", index=False
        )
        steps = [10, 20, 30]
        pd.DataFrame({
            "step": steps, "epoch": [1, 2, 3],
            "train_loss": [0.6, 0.35, train_loss],
            "validation_loss": [0.5, 0.4, validation_loss],
            "validation_accuracy": [0.7, 0.8, correct / EXAMPLES],
        }).to_csv(run_dir / "history.csv", index=False)
        tokens = ["[CLS]", "a", "gripping", "film", "[SEP]"]
        layer = np.random.default_rng(seed).dirichlet(np.ones(len(tokens)), size=len(tokens)).tolist()
        (run_dir / "attention.json").write_text(json.dumps(
            {"experiment": experiment, "seed": seed, "text": "a gripping film", "tokens": tokens, "layers": [layer, layer]}
        ))
    return run_dir


def fake_flops_rows(experiment, d=768):
    """Long FLOPs rows shaped like the contract (numbers follow the analytic per-layer model)."""
    pattern, sparsity = EXPERIMENTS[experiment]
    rows = []
    for n in (64, 128, 256, 512):
        dense = {
            "qkv_projections": 6 * n * d * d, "qk_scores": 2 * n * n * d, "softmax": 5 * n * n * 12,
            "attention_values": 2 * n * n * d, "output_projection": 2 * n * d * d, "ffn": 16 * n * d * d,
        }
        kept = 1 - sparsity
        views = {
            "as_executed": dict(dense),
            "ideal_sparse": {**dense, "qk_scores": dense["qk_scores"] * kept, "attention_values": dense["attention_values"] * kept},
        }
        views["paper_accounting"] = {k: v for k, v in views["ideal_sparse"].items() if k != "ffn"}
        for view, flops in views.items():
            counted = {k: dense[k] for k in flops}
            for component in [*flops, "total"]:
                value = sum(flops.values()) if component == "total" else flops[component]
                reference = sum(counted.values()) if component == "total" else counted[component]
                for pass_name, factor in (("forward", 1), ("training", 3)):
                    rows.append({
                        "experiment": experiment, "pattern": pattern, "sparsity": sparsity, "seq_len": n,
                        "view": view, "component": component, "pass": pass_name,
                        "dense_flops": reference * factor, "flops": value * factor, "reduction": 1 - value / reference,
                    })
    return rows


@pytest.fixture
def three_seed_runs(tmp_path):
    """Baseline losses 0.30/0.32/0.34; sparse runs 4, 5, 6 examples better on seeds 0, 1, 2."""
    run_dirs = []
    for seed, (base, loss) in enumerate(zip([80, 82, 84], [0.30, 0.32, 0.34])):
        run_dirs.append(write_run(tmp_path, "dense_baseline", seed, base, validation_loss=loss, train_loss=0.2))
        run_dirs.append(write_run(tmp_path, "light_sparse", seed, base + 2, validation_loss=loss - 0.01))
        run_dirs.append(write_run(tmp_path, "aggressive_sparse", seed, base + 4 + seed, validation_loss=loss - 0.02))
    return run_dirs


def test_runs_table_has_one_row_per_run_with_gap(three_seed_runs):
    runs = tables.collect_runs(three_seed_runs)
    assert len(runs) == 9
    assert list(runs.columns) == tables.RUN_COLUMNS
    assert runs["experiment"].drop_duplicates().tolist() == ["dense_baseline", "light_sparse", "aggressive_sparse"]
    dense0 = runs[(runs["experiment"] == "dense_baseline") & (runs["seed"] == 0)].iloc[0]
    assert dense0["validation_accuracy"] == 0.80 and dense0["correct"] == 80 and dense0["total"] == 100
    assert dense0["loss_gap"] == pytest.approx(0.30 - 0.20)


def test_summary_mean_and_sample_std(three_seed_runs):
    summary = tables.summarize(tables.collect_runs(three_seed_runs)).set_index("experiment")
    dense = summary.loc["dense_baseline"]
    assert dense["n_seeds"] == 3
    assert dense["validation_loss_mean"] == pytest.approx(0.32)
    assert dense["validation_loss_std"] == pytest.approx(0.02)  # sample std of 0.30, 0.32, 0.34
    assert dense["validation_accuracy_std"] == pytest.approx(0.02)  # 0.80, 0.82, 0.84
    assert dense["examples_per_s_mean"] == pytest.approx(41.0)


def test_single_seed_leaves_std_blank_not_zero(tmp_path):
    runs = tables.collect_runs([write_run(tmp_path, "dense_baseline", 0, 90), write_run(tmp_path, "light_sparse", 0, 91)])
    summary = tables.summarize(runs)
    assert summary["validation_accuracy_std"].isna().all()
    summary.to_csv(tmp_path / "summary.csv", index=False)
    row = pd.read_csv(tmp_path / "summary.csv", dtype=str, keep_default_na=False).iloc[0]
    assert row["validation_accuracy_std"] == ""
    assert "±" not in tables.summary_display(summary)["Accuracy (%)"].iloc[0]


def test_delta_and_exact_sign_flip_p_value(three_seed_runs):
    summary = tables.summarize(tables.collect_runs(three_seed_runs)).set_index("experiment")
    aggressive = summary.loc["aggressive_sparse"]
    assert aggressive["delta_accuracy_mean"] == pytest.approx(0.05)  # mean of 0.04, 0.05, 0.06
    # All three differences positive: only all-plus and all-minus of the 8 sign flips reach |sum|.
    assert aggressive["paired_p_value"] == pytest.approx(0.25)
    assert aggressive["paired_test"] == "exact sign-flip permutation, n=3"
    assert pd.isna(summary.loc["dense_baseline", "paired_p_value"])


def test_sign_flip_p_value_on_hand_examples():
    p, _ = tables.sign_flip_test([1.0, 2.0, 4.0])  # |sum| 7 is reached only by all-plus and all-minus
    assert p == pytest.approx(2 / 8)
    p, _ = tables.sign_flip_test([3.0, 2.0, -1.0])  # |sum| 4; flip sums 6, 4, -4, -6 reach it
    assert p == pytest.approx(4 / 8)
    p, _ = tables.sign_flip_test([1.0, 1.0, -2.0])  # sum 0: every flip reaches it
    assert p == 1.0


def test_mcnemar_exact_hand_examples(three_seed_runs):
    # 2 gained, 8 lost: 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * 56 / 1024
    assert tables.mcnemar_exact_p_value(2, 8) == pytest.approx(0.109375)
    assert tables.mcnemar_exact_p_value(8, 2) == pytest.approx(0.109375)
    assert tables.mcnemar_exact_p_value(0, 0) == 1.0
    assert tables.mcnemar_exact_p_value(5, 5) == 1.0

    # The fake predictions nest (the first k examples right), so aggressive gains 4 + 5 + 6 and loses none.
    predictions = {
        (path.parent.name, int(path.name[4:])): path / "predictions.csv" for path in three_seed_runs
    }
    summary = tables.summarize(tables.collect_runs(three_seed_runs), predictions=predictions).set_index("experiment")
    aggressive = summary.loc["aggressive_sparse"]
    assert (aggressive["mcnemar_gained"], aggressive["mcnemar_lost"], aggressive["mcnemar_examples"]) == (15, 0, 300)
    assert aggressive["mcnemar_p_value"] == pytest.approx(2 / 2**15)


def test_mcnemar_refuses_predictions_of_different_examples(three_seed_runs, tmp_path):
    shifted = tmp_path / "shifted.csv"
    frame = pd.read_csv(three_seed_runs[0] / "predictions.csv")
    frame.assign(index=frame["index"] + 1000).to_csv(shifted, index=False)
    predictions = {("dense_baseline", 0): three_seed_runs[0] / "predictions.csv", ("light_sparse", 0): shifted}
    with pytest.raises(ValueError, match="different validation examples"):
        tables.summarize(tables.collect_runs(three_seed_runs), predictions=predictions)


def test_missing_key_error_names_the_file(tmp_path):
    run_dir = write_run(tmp_path, "dense_baseline", 0, 90, with_artifacts=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    del metrics["validation"]["loss"]
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match=r"seed0/metrics.json has no key 'validation.loss'"):
        tables.collect_runs([run_dir])


def test_accuracy_in_percent_is_refused(tmp_path):
    run_dir = write_run(tmp_path, "dense_baseline", 0, 90, with_artifacts=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["validation"]["accuracy"] = 90.0
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match="disagrees with"):
        tables.collect_runs([run_dir])


def test_flops_reduction_table():
    flops = pd.DataFrame(fake_flops_rows("dense_baseline") + fake_flops_rows("aggressive_sparse"))
    reductions = tables.flops_reductions(flops).set_index(["experiment", "seq_len"])
    assert reductions.loc[("dense_baseline", 512), "ideal_sparse"] == 0
    assert reductions.loc[("aggressive_sparse", 512), "as_executed"] == 0
    d, n = 768, 512
    attention_sublayer = 8 * n * d * d + 4 * n * n * d + 60 * n * n
    expected = 100 * 0.8 * 4 * n * n * d / attention_sublayer
    assert reductions.loc[("aggressive_sparse", 512), "paper_accounting"] == pytest.approx(expected)
    assert reductions.loc[("aggressive_sparse", 512), "ideal_sparse"] < expected  # the FFN dilutes the saving


@pytest.fixture
def written_tables(three_seed_runs, tmp_path, monkeypatch):
    """write_tables with crisp.flops.flops_rows replaced by the contract-shaped fake."""
    flops_files = []
    for experiment in EXPERIMENTS:
        path = tmp_path / "flops" / f"{experiment}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"experiment": experiment}))
        flops_files.append(path)
    import crisp.flops

    monkeypatch.setattr(crisp.flops, "flops_rows", lambda report: fake_flops_rows(report["experiment"]))
    out_dir = tmp_path / "tables"
    paths = tables.write_tables(three_seed_runs, flops_files, out_dir)
    return out_dir, paths


def test_write_tables_writes_every_file_naming_every_experiment(written_tables):
    out_dir, paths = written_tables
    assert sorted(path.name for path in paths.values()) == sorted(
        ["runs.csv", "summary.csv", "summary.md", "summary.tex", "flops.csv", "flops.md"]
    )
    markdown = (out_dir / "summary.md").read_text()
    latex = (out_dir / "summary.tex").read_text()
    for experiment in EXPERIMENTS:
        assert experiment in markdown
        assert experiment.replace("_", r"\_") in latex
        assert experiment in (out_dir / "flops.md").read_text()
    assert "82.00 ± 2.00" in markdown  # dense accuracy in %, mean ± sample std
    assert "+5.00" in markdown  # aggressive delta in points
    assert "91.59" in markdown and "832" in markdown and "sign-flip" in markdown
    assert r"\toprule" in latex and r"\bottomrule" in latex and r"$\pm$" in latex
    summary = pd.read_csv(out_dir / "summary.csv").set_index("experiment")
    assert summary.loc["aggressive_sparse", "mcnemar_gained"] == 15  # predictions.csv found in the run folders
    assert list(pd.read_csv(out_dir / "flops.csv").columns) == list(ROW_COLUMNS)


def test_tables_read_the_json_of_crisp_flops(three_seed_runs, tmp_path):
    from crisp.flops import Architecture, profile_experiment

    distilbert = Architecture(layers=6, hidden=768, heads=12, intermediate=3072)
    flops_files = []
    for experiment, (pattern, sparsity) in EXPERIMENTS.items():
        report = profile_experiment(distilbert, experiment, pattern, sparsity, [128, 512])
        flops_files.append(tmp_path / f"{experiment}.json")
        flops_files[-1].write_text(json.dumps(report))
    tables.write_tables(three_seed_runs, flops_files, tmp_path / "tables", baseline="dense_baseline")
    reductions = tables.flops_reductions(pd.read_csv(tmp_path / "tables" / "flops.csv")).set_index(["experiment", "seq_len"])
    assert reductions.loc[("aggressive_sparse", 512), "as_executed"] == pytest.approx(0)
    assert 0 < reductions.loc[("aggressive_sparse", 512), "ideal_sparse"] < reductions.loc[("aggressive_sparse", 512), "paper_accounting"]


def test_every_figure_is_written_as_png_and_pdf(written_tables, three_seed_runs, tmp_path):
    out_dir, _ = written_tables
    figure_dir = tmp_path / "figures"
    paths = figures.write_figures(out_dir, three_seed_runs, figure_dir)
    assert len(paths) == 2 * len(figures.FIGURES)
    for name in figures.FIGURES:
        png, pdf = figure_dir / f"{name}.png", figure_dir / f"{name}.pdf"
        assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 10_000
        assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 1_000


def test_attention_figure_pairs_dense_and_aggressive_else_lowest_and_highest(three_seed_runs):
    runs = tables.collect_runs(three_seed_runs)
    _, attentions = figures.read_run_artifacts(three_seed_runs)
    chosen = figures.choose_attention_runs(attentions, runs)
    assert [(a["experiment"], a["seed"]) for a in chosen] == [("dense_baseline", 0), ("aggressive_sparse", 0)]

    # Without an experiment named aggressive_sparse: lowest vs highest sparsity, first seed available.
    renamed = {(name.replace("aggressive", "heavy"), seed): value for (name, seed), value in attentions.items()}
    del renamed[("heavy_sparse", 0)]
    renamed_runs = runs.assign(experiment=runs["experiment"].str.replace("aggressive", "heavy"))
    chosen = figures.choose_attention_runs(renamed, renamed_runs)
    assert chosen == [renamed[("dense_baseline", 0)], renamed[("heavy_sparse", 1)]]


def test_figures_without_flops_or_artifacts_still_write_every_file(tmp_path):
    run_dirs = [write_run(tmp_path, "dense_baseline", 0, 90, with_artifacts=False),
                write_run(tmp_path, "light_sparse", 0, 91, with_artifacts=False)]
    tables_dir = tmp_path / "tables"
    tables.write_tables(run_dirs, [], tables_dir)
    figures.write_figures(tables_dir, run_dirs, tmp_path / "figures")
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(
        f"{name}.{extension}" for name in figures.FIGURES for extension in figures.FORMATS
    )
