"""The Snakemake workflow: the DAG's jobs, the smoke matrix end to end, and what reruns when.

The smoke pipeline (.test/config.yaml: two tasks, one of sentence pairs, x two tiny encoders x
two experiments, one a control declared as a sweep, x two seeds) runs once per test session in a
copy of the repository; every rerun check then asks Snakemake, in a dry run, which jobs it would
run.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from browser_helpers import render_report
from workflow_helpers import REPO as ROOT
from workflow_helpers import copy_repository, job_stats, run_snakemake

from crisp.config import load_config
from crisp.layout import TABLES, TASK_MODEL_FIGURES, figure_names, model_slug

SMOKE = ".test/config.yaml"

pytestmark = pytest.mark.pipeline


def planned_jobs(workdir: Path, *args: str) -> Counter:
    """Jobs a dry run would execute, by rule."""
    result = run_snakemake(workdir, "--dry-run", "--cores", "2", *args)
    return job_stats(result.stdout + result.stderr)


def write_overlay(workdir: Path, name: str, overrides: dict) -> str:
    path = workdir / name
    path.write_text(yaml.safe_dump(overrides))
    return name


def smoke_config(workdir: Path = ROOT) -> dict:
    return load_config([workdir / "config.yaml", workdir / SMOKE])


def test_default_config_plans_the_paper_dag(tmp_path):
    config = load_config([ROOT / "config.yaml"])
    n_experiments, n_seeds = len(config["experiments"]), len(config["seeds"])
    jobs = planned_jobs(ROOT, "--config", f"results={tmp_path}")
    assert jobs == Counter(
        {"fetch": 2, "data": 1, "train": n_experiments * n_seeds, "flops": 1, "tables": 1, "figures": 1, "all": 1}
    )


def test_glue_config_plans_the_matrix(tmp_path):
    config = load_config([ROOT / "config.yaml", ROOT / "config/glue.yaml"])
    tasks, models, experiments, seeds = (len(config[key]) for key in ("tasks", "models", "experiments", "seeds"))
    jobs = planned_jobs(ROOT, "--configfile", "config/glue.yaml", "--config", f"results={tmp_path}")
    assert jobs["train"] == tasks * models * experiments * seeds == 960
    assert jobs["data"] == tasks * models  # one tokenizer per model
    assert jobs["flops"] == models  # one per model, every experiment
    assert jobs["fetch"] == models + tasks  # each Hub model, and each task's configuration of nyu-mll/glue


def test_parsing_the_workflow_imports_no_ml_library_and_writes_nothing(tmp_path):
    workdir = copy_repository(tmp_path / "repo")
    probe = workdir / "probe.smk"
    probe.write_text(
        'include: "Snakefile"\n\n'
        "import sys\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'matplotlib') if m in sys.modules)\n"
        "print('HEAVY_MODULES', heavy)\n"
    )
    result = run_snakemake(workdir, "-s", "probe.smk", "--dry-run", "--configfile", SMOKE, "--cores", "1")
    assert "HEAVY_MODULES []" in result.stdout + result.stderr
    assert not (workdir / "results").exists()  # a dry run writes no configuration files


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke pipeline, run to completion once in a copy of the repository."""
    workdir = copy_repository(tmp_path_factory.mktemp("pipeline") / "repo")
    started = time.perf_counter()
    run_snakemake(workdir, "--cores", "2", "--configfile", SMOKE)
    print(f"smoke pipeline: {time.perf_counter() - started:.1f} s")
    return workdir, workdir / smoke_config(workdir)["results"]


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_smoke_matrix_produces_every_run_table_and_figure(smoke):
    workdir, results = smoke
    config = smoke_config(workdir)
    tasks, models, experiments, seeds = (config[key] for key in ("tasks", "models", "experiments", "seeds"))
    slugs = [model_slug(model) for model in models]

    runs = read_csv(results / "tables" / "runs.csv")
    assert sorted((r["task"], r["model_slug"], r["experiment"], int(r["seed"])) for r in runs) == sorted(
        (t, m, e, s) for t in tasks for m in slugs for e in experiments for s in seeds
    )
    for row in runs:
        assert int(row["total"]) == 64  # every validation example is evaluated
        assert 0.0 <= float(row["validation_accuracy"]) <= 1.0 and float(row["validation_loss"]) > 0
        assert float(row["ece"]) >= 0 and 0 <= float(row["brier"]) <= 2
    # Single sentences are learnt by a tiny dense model: clearly above chance (0.5; one standard
    # error on 64 examples is 0.0625).
    sentiment = [
        float(r["validation_accuracy"])
        for r in runs
        if r["task"] == "sentiment" and r["experiment"] == "dense_baseline"
    ]
    assert sum(sentiment) / len(sentiment) >= 0.7 and min(sentiment) > 0.6, sentiment

    summary = read_csv(results / "tables" / "summary.csv")
    keys = sorted((r["task"], r["model_slug"], r["experiment"]) for r in summary)
    assert keys == sorted((t, m, e) for t in tasks for m in slugs for e in experiments)
    for row in summary:
        assert int(float(row["n_seeds"])) == len(seeds)
        if row["experiment"] != config["baseline"]:
            assert (
                float(row["delta_primary_low"]) <= float(row["delta_primary_mean"]) <= float(row["delta_primary_high"])
            )

    flops = read_csv(results / "tables" / "flops.csv")
    paper = [
        r
        for r in flops
        if r["experiment"] == "random_sweep_80"
        and r["view"] == "paper_accounting"
        and r["component"] == "total"
        and r["pass"] == "forward"
    ]
    assert paper and all(0 < float(r["reduction"]) < 0.8 for r in paper)
    executed = [r for r in flops if r["view"] == "as_executed" and r["component"] == "total"]
    assert executed and all(abs(float(r["reduction"])) < 1e-9 for r in executed)

    figures = results / "figures"
    expected = (
        ["sparsity_effects"]
        + [f"{t}/{m}/{f}" for t in tasks for m in slugs for f in TASK_MODEL_FIGURES]
        + [f"flops/{m}" for m in slugs]
    )
    for name in expected:
        for ext in ("png", "pdf"):
            assert (figures / f"{name}.{ext}").stat().st_size > 1000, name

    run = results / "runs" / "pairs" / "tiny-bert" / "random_sweep_80" / "seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["sparsity"] == 0.8 and metrics["validation"]["total"] == 64 and metrics["task"] == "pairs"
    assert len(metrics["diagnostics"]["kept_fraction"]) == 2  # one per layer of the tiny model
    assert not (
        results / "checkpoints" / "pairs" / "tiny-bert" / "random_sweep_80" / "seed0"
    ).exists()  # removed once complete
    for rule in ("tables", "figures"):
        assert (results / "benchmarks" / f"{rule}.tsv").exists()
        assert (results / "logs" / f"{rule}.log").exists()


def test_second_run_does_nothing(smoke):
    workdir, _ = smoke
    started = time.perf_counter()
    result = run_snakemake(workdir, "--cores", "2", "--configfile", SMOKE)
    elapsed = time.perf_counter() - started
    assert "Nothing to be done" in result.stdout + result.stderr
    print(f"no-op rerun: {elapsed:.1f} s")


def matrix_size(workdir: Path, *keys: str) -> int:
    config = smoke_config(workdir)
    size = 1
    for key in keys:
        size *= len(config[key])
    return size


def test_changing_one_sparsity_reruns_only_that_experiment(smoke):
    workdir, _ = smoke
    # the sweep's one point moves from 0.8 to 0.6: random_sweep_60 runs, nothing else trains again
    overlay = write_overlay(
        workdir, "overlay-sparsity.yaml", {"sweeps": {"random_sweep": {"pattern": "random", "sparsities": [0.6]}}}
    )
    jobs = planned_jobs(workdir, "--configfile", SMOKE, overlay)
    runs = matrix_size(workdir, "tasks", "models", "seeds")
    assert jobs == Counter(
        {"train": runs, "flops": matrix_size(workdir, "models"), "tables": 1, "figures": 1, "all": 1}
    )


def test_adding_a_seed_adds_only_its_jobs(smoke):
    workdir, _ = smoke
    seeds = smoke_config(workdir)["seeds"]
    overlay = write_overlay(workdir, "overlay-seed.yaml", {"seeds": [*seeds, max(seeds) + 1]})
    jobs = planned_jobs(workdir, "--configfile", SMOKE, overlay)
    assert jobs == Counter(
        {"train": matrix_size(workdir, "tasks", "models", "experiments"), "tables": 1, "figures": 1, "all": 1}
    )


def test_adding_a_task_adds_only_its_jobs(smoke):
    workdir, _ = smoke
    overlay = write_overlay(
        workdir,
        "overlay-task.yaml",
        {"tasks": {"more": {"name": "synthetic", "seed": 3, "synthetic": {"train_size": 64}}}},
    )
    jobs = planned_jobs(workdir, "--configfile", SMOKE, overlay)
    # the tiny encoders share one tokenizer, so one new data job
    assert jobs == Counter(
        {
            "data": 1,
            "train": matrix_size(workdir, "models", "experiments", "seeds"),
            "tables": 1,
            "figures": 1,
            "all": 1,
        }
    )


def test_adding_a_model_adds_only_its_jobs(smoke):
    workdir, _ = smoke
    models = smoke_config(workdir)["models"]
    overlay = write_overlay(workdir, "overlay-model.yaml", {"models": [*models, "tiny:roberta"]})
    jobs = planned_jobs(workdir, "--configfile", SMOKE, overlay)
    # its tokenizer (the bundled MiniLM's) is cached already: no data job
    assert jobs == Counter(
        {
            "train": matrix_size(workdir, "tasks", "experiments", "seeds"),
            "flops": 1,
            "tables": 1,
            "figures": 1,
            "all": 1,
        }
    )


def test_changing_max_length_reruns_data_and_everything_downstream(smoke):
    workdir, _ = smoke
    overlay = write_overlay(workdir, "overlay-length.yaml", {"max_length": 48})
    jobs = planned_jobs(workdir, "--configfile", SMOKE, overlay)
    assert jobs["data"] == matrix_size(workdir, "tasks")
    assert jobs["train"] == matrix_size(workdir, "tasks", "models", "experiments", "seeds")
    assert jobs["tables"] == 1 and jobs["figures"] == 1
    assert "flops" not in jobs  # FLOPs are counted per sequence length, not per max_length


@pytest.mark.parametrize(
    "module, expected",
    [
        ("figures", {"figures", "all"}),
        ("tables", {"tables", "figures", "all"}),
        ("train", {"train", "tables", "figures", "all"}),
        ("attention", {"train", "flops", "tables", "figures", "all"}),
        ("data", {"data", "train", "tables", "figures", "all"}),
    ],
)
def test_editing_crisp_source_reruns_the_rules_that_run_it(smoke, module, expected):
    workdir, _ = smoke
    source = workdir / "crisp" / f"{module}.py"
    original, stat = source.read_text(), source.stat()
    try:
        source.write_text(original + "\n# edited\n")
        os.utime(source, ns=(stat.st_atime_ns, time.time_ns()))  # newer than every output
        jobs = planned_jobs(workdir, "--configfile", SMOKE)
        assert set(jobs) == expected
    finally:
        source.write_text(original)
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert planned_jobs(workdir, "--configfile", SMOKE) == Counter()  # restored: nothing to do


def test_offline_paper_config_fails_fast_pointing_to_the_demo(tmp_path):
    workdir = copy_repository(tmp_path / "repo")
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_DISABLE_TELEMETRY": "1"}
    target = "results/data/sst2/distilbert-base-uncased"  # the data job of the paper protocol
    result = run_snakemake(workdir, "--cores", "1", target, check=False, env=env, timeout=300)
    assert result.returncode != 0
    # The fetch job stops it, in one line; the data job never starts.
    logs = sorted((workdir / "results" / "logs" / "fetch").rglob("*.log"))
    assert logs and not (workdir / "results" / "logs" / "data").exists()
    for path in logs:
        lines = path.read_text().strip().splitlines()
        assert len(lines) == 1 and "config/demo.yaml" in lines[0] and "bundled:minilm" in lines[0], lines


@pytest.fixture(scope="module")
def report_html(smoke):
    """The smoke pipeline's HTML report (snakemake --report)."""
    workdir, _ = smoke
    run_snakemake(workdir, "--configfile", SMOKE, "--report", "report.html")
    return workdir / "report.html"


def test_report_groups_every_figure_with_its_caption(report_html):
    html = report_html.read_text(errors="replace")
    for name in ("sparsity_effects", *TASK_MODEL_FIGURES):
        assert f"{name}.png" in html
    assert "Task pairs" in html and "Task sentiment" in html  # grouped by task
    assert "seed" in html.lower()  # captions explain the error bars over seeds


def test_report_shows_the_summary_table_and_the_figures_in_a_browser(smoke, report_html, tmp_path):
    workdir, results = smoke
    shown = render_report(report_html, tmp_path / "chromium")
    assert "Tables" in shown["categories"], shown["categories"]
    tables = [name for name in ("summary.csv", "pooled.csv") if name in TABLES]  # pooled where written
    for name in tables:
        path = results / "tables" / name
        with open(path, newline="") as handle:
            written = list(csv.reader(handle))
        key = str(path.relative_to(workdir))
        assert key in shown["tables"], sorted(shown["tables"])
        assert shown["tables"][key] == written  # every cell of the CSV, header first, in the page
    assert shown["images"], "no figure in the report"
    config = smoke_config(workdir)
    for name in figure_names(config["tasks"], config["models"]):
        key = str((results / "figures" / f"{name}.png").relative_to(workdir))
        width, height = shown["images"].get(key, (0, 0))
        assert width > 100 and height > 100, (key, width, height)  # decoded by the browser
    assert shown["shown_image"] and shown["shown_image"][0] > 100  # and displayed in the page


@pytest.mark.parametrize(
    "overlay, key",
    [
        (
            {"experiments": {"random_sparse": {"pattern": "random", "sparsity": 1.5}}},
            "experiments.random_sparse.sparsity",
        ),
        (
            {"experiments": {"dense_baseline": {"pattern": "stripes", "sparsity": 0.3}}},
            "experiments.dense_baseline.pattern",
        ),
        ({"training": {"learning_rate": -0.1}}, "training.learning_rate"),
        ({"trainig": {"epochs": 1}}, "trainig"),
        ({"models": ["tiny:gpt3"]}, "models.0"),
    ],
)
def test_workflow_rejects_a_bad_config_before_any_job(tmp_path, overlay, key):
    workdir = copy_repository(tmp_path / "repo")
    name = write_overlay(workdir, "bad.yaml", overlay)
    result = run_snakemake(workdir, "--dry-run", "--configfile", SMOKE, name, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"'{key}'" in output and "Traceback" not in output
