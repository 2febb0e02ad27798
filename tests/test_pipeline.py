"""The Snakemake workflow: the DAG's jobs, the smoke pipeline end to end, and what reruns when.

The smoke pipeline runs once per test session in a copy of the repository (a temporary folder);
every rerun check then asks Snakemake, in a dry run, which jobs it would run.
"""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from workflow_helpers import REPO as ROOT
from workflow_helpers import copy_repository, job_stats, run_snakemake

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


def test_default_config_plans_the_paper_dag(tmp_path):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    n_experiments, n_seeds = len(config["experiments"]), len(config["seeds"])
    jobs = planned_jobs(ROOT, "--config", f"results={tmp_path}")
    assert jobs == Counter(
        {"prepare_data": 1, "finetune": n_experiments * n_seeds, "profile_flops": n_experiments, "aggregate": 1, "figures": 1, "all": 1}
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke pipeline, run to completion once in a copy of the repository."""
    workdir = copy_repository(tmp_path_factory.mktemp("pipeline") / "repo")
    started = time.perf_counter()
    run_snakemake(workdir, "--cores", "2", "--configfile", SMOKE)
    print(f"smoke pipeline: {time.perf_counter() - started:.1f} s")
    config = yaml.safe_load((workdir / SMOKE).read_text())
    return workdir, workdir / config["results"]


def test_smoke_pipeline_produces_every_table_and_figure(smoke):
    workdir, results = smoke
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    experiments = list(config["experiments"])
    seeds = yaml.safe_load((workdir / SMOKE).read_text())["seeds"]

    with open(results / "tables" / "runs.csv") as handle:
        runs = list(csv.DictReader(handle))
    assert sorted((row["experiment"], int(row["seed"])) for row in runs) == sorted((e, s) for e in experiments for s in seeds)
    for row in runs:
        assert 0.0 <= float(row["validation_accuracy"]) <= 1.0
        assert int(row["total"]) == 64  # every validation example is evaluated
        assert float(row["validation_loss"]) > 0

    with open(results / "tables" / "summary.csv") as handle:
        summary = {row["experiment"]: row for row in csv.DictReader(handle)}
    assert set(summary) == set(experiments)
    assert all(int(float(summary[e]["n_seeds"])) == len(seeds) for e in experiments)

    with open(results / "tables" / "flops.csv") as handle:
        flops = list(csv.DictReader(handle))
    paper = [r for r in flops if r["experiment"] == "aggressive_sparse" and r["view"] == "paper_accounting" and r["component"] == "total" and r["pass"] == "forward"]
    assert paper and all(0 < float(r["reduction"]) < 0.8 for r in paper)
    executed = [r for r in flops if r["view"] == "as_executed" and r["component"] == "total"]
    assert executed and all(abs(float(r["reduction"])) < 1e-9 for r in executed)

    figures = sorted(p.name for p in (results / "figures").iterdir())
    assert len(figures) >= 10 and all((results / "figures" / name).stat().st_size > 1000 for name in figures)

    metrics = json.loads((results / "runs" / "aggressive_sparse" / "seed0" / "metrics.json").read_text())
    assert metrics["sparsity"] == 0.8 and metrics["validation"]["total"] == 64
    assert not (results / "checkpoints" / "aggressive_sparse" / "seed0").exists()  # removed once outputs are complete
    for rule in ("prepare_data", "aggregate", "figures"):
        assert (results / "benchmarks" / f"{rule}.tsv").exists()
        assert (results / "logs" / f"{rule}.log").exists()


def test_second_run_does_nothing(smoke):
    workdir, _ = smoke
    started = time.perf_counter()
    result = run_snakemake(workdir, "--cores", "2", "--configfile", SMOKE)
    elapsed = time.perf_counter() - started
    assert "Nothing to be done" in result.stdout + result.stderr
    print(f"no-op rerun: {elapsed:.1f} s")


def test_changing_one_sparsity_reruns_only_that_experiment(smoke):
    workdir, _ = smoke
    seeds = yaml.safe_load((workdir / SMOKE).read_text())["seeds"]
    overlay = write_overlay(workdir, "overlay-sparsity.yaml", {"experiments": {"light_sparse": {"pattern": "topk", "sparsity": 0.4}}})
    jobs = planned_jobs(workdir, "--configfile", SMOKE, overlay)
    assert jobs == Counter({"finetune": len(seeds), "profile_flops": 1, "aggregate": 1, "figures": 1, "all": 1})


def test_adding_a_seed_adds_only_its_jobs(smoke):
    workdir, _ = smoke
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    seeds = yaml.safe_load((workdir / SMOKE).read_text())["seeds"]
    overlay = write_overlay(workdir, "overlay-seed.yaml", {"seeds": [*seeds, max(seeds) + 1]})
    jobs = planned_jobs(workdir, "--configfile", SMOKE, overlay)
    assert jobs == Counter({"finetune": len(config["experiments"]), "aggregate": 1, "figures": 1, "all": 1})


def test_changing_max_length_reruns_data_and_everything_downstream(smoke):
    workdir, _ = smoke
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    seeds = yaml.safe_load((workdir / SMOKE).read_text())["seeds"]
    overlay = write_overlay(workdir, "overlay-length.yaml", {"max_length": 48})
    jobs = planned_jobs(workdir, "--configfile", SMOKE, overlay)
    assert jobs["prepare_data"] == 1
    assert jobs["finetune"] == len(config["experiments"]) * len(seeds)
    assert jobs["aggregate"] == 1 and jobs["figures"] == 1


def test_changing_the_tokenizer_reruns_data_and_everything_downstream(smoke):
    workdir, _ = smoke
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    seeds = yaml.safe_load((workdir / SMOKE).read_text())["seeds"]
    overlay = write_overlay(workdir, "overlay-tokenizer.yaml", {"tokenizer": "bundled:minilm"})
    jobs = planned_jobs(workdir, "--configfile", SMOKE, overlay)
    assert jobs["prepare_data"] == 1
    assert jobs["finetune"] == len(config["experiments"]) * len(seeds)


@pytest.mark.parametrize(
    "module, expected",
    [
        ("figures", {"figures", "all"}),
        ("tables", {"aggregate", "figures", "all"}),
        ("train", {"finetune", "aggregate", "figures", "all"}),
    ],
)
def test_editing_crisp_source_reruns_the_rules_that_run_it(smoke, module, expected):
    workdir, _ = smoke
    source = workdir / "crisp" / f"{module}.py"
    original = source.read_text()
    try:
        time.sleep(1.1)  # a clearly newer modification time than the outputs
        source.write_text(original + "\n# edited\n")
        jobs = planned_jobs(workdir, "--configfile", SMOKE)
        assert set(jobs) == expected
    finally:
        source.write_text(original)


def test_offline_paper_config_fails_fast_pointing_to_the_demo(tmp_path):
    workdir = copy_repository(tmp_path / "repo")
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_DISABLE_TELEMETRY": "1"}
    started = time.perf_counter()
    result = run_snakemake(workdir, "--cores", "1", "prepare_data", check=False, env=env, timeout=300)
    elapsed = time.perf_counter() - started
    assert result.returncode != 0
    log = (workdir / "results" / "logs" / "prepare_data.log").read_text()
    assert "config/demo.yaml" in log and "bundled:minilm" in log, log
    assert elapsed < 120, f"took {elapsed:.0f} s to report an unreachable Hub"


def test_report_has_every_figure_with_its_caption(smoke):
    workdir, _ = smoke
    run_snakemake(workdir, "--configfile", SMOKE, "--report", "report.html")
    html = (workdir / "report.html").read_text(errors="replace")
    from crisp.figures import FIGURES

    for name in FIGURES:
        assert f"{name}.png" in html
    assert "seed" in html.lower()  # captions explain the error bars over seeds


@pytest.mark.parametrize(
    "overlay, key",
    [
        ({"experiments": {"aggressive_sparse": {"pattern": "topk", "sparsity": 1.5}}}, "experiments.aggressive_sparse.sparsity"),
        ({"experiments": {"light_sparse": {"pattern": "stripes", "sparsity": 0.3}}}, "experiments.light_sparse.pattern"),
        ({"training": {"learning_rate": -0.1}}, "training.learning_rate"),
        ({"trainig": {"epochs": 1}}, "trainig"),
    ],
)
def test_workflow_rejects_a_bad_config_before_any_job(tmp_path, overlay, key):
    workdir = copy_repository(tmp_path / "repo")
    name = write_overlay(workdir, "bad.yaml", overlay)
    result = run_snakemake(workdir, "--dry-run", "--configfile", SMOKE, name, check=False)
    assert result.returncode != 0
    assert f"'{key}'" in result.stdout + result.stderr
