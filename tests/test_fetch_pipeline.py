"""The paper protocol (config.yaml itself: distilbert-base-uncased on GLUE SST-2, seven experiments)
through the whole DAG, from a Hugging Face cache and with the network blocked: fetch, data, train,
flops, tables, figures.

Only sizes are layered on (SIZES: one seed, one epoch, 16 tokens, small batches, the CPU); the
models, tasks and experiments are config.yaml's. The cache (tests/hf_cache.py) holds a tiny
DistilBERT under the id distilbert-base-uncased and an SST-2-shaped data set under nyu-mll/glue,
at known commits, laid out as huggingface_hub writes it. Snakemake runs in a network namespace
with no network (`unshare -n`, as root; elsewhere against a Hub endpoint that refuses every
connection), and an audit hook in every Python process records any
attempt at a connection or a host-name lookup: there must be none, in the fetch jobs too (which
are not switched offline: they find everything in the cache first).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import yaml
from hf_cache import DATASET_COMMIT, DATASET_ID, MODEL_COMMIT, MODEL_ID, seed_cache
from test_fetch import REFUSED_ENDPOINT, can_block_network, network_attempts, offline_environment
from workflow_helpers import copy_repository, job_stats, run_snakemake

from crisp.config import load_config

pytestmark = pytest.mark.pipeline

SIZES = {
    "seeds": [0],
    "max_length": 16,
    "training": {
        "epochs": 1,
        "batch_size": 16,
        "eval_batch_size": 32,
        "evals_per_epoch": 1,
        "checkpoints_per_epoch": 1,
        "device": "cpu",
        "threads": 1,
        "mem_mb": 1000,
        "runtime_min": 10,
    },
    "profiling": {"sequence_lengths": [16, 32], "measure_seq_len": 16},
    "statistics": {"bootstrap_resamples": 200},
}
PIN_MISSING = "0123456789abcdef0123456789abcdef01234567"


def snakemake_offline(workdir: Path, hf_home: Path, log: Path, *args: str, check: bool = True):
    """Snakemake in a network namespace with no network (where not root: a Hub endpoint that refuses
    every connection), every Python process audited."""
    env = offline_environment(hf_home, log)
    if can_block_network():
        return run_snakemake(workdir, *args, check=check, env=env, wrapper=["unshare", "-n"])
    return run_snakemake(workdir, *args, check=check, env={**env, "HF_ENDPOINT": REFUSED_ENDPOINT})


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    """config.yaml with SIZES, run to completion once from the seeded cache; (workdir, hf_home, log)."""
    workdir = copy_repository(tmp_path_factory.mktemp("paper") / "repo")
    hf_home = tmp_path_factory.mktemp("hf-home")
    seed_cache(hf_home)
    (workdir / "sizes.yaml").write_text(yaml.safe_dump(SIZES))
    log = workdir / "network.log"
    started = time.perf_counter()
    result = snakemake_offline(workdir, hf_home, log, "--cores", "2", "--configfile", "sizes.yaml")
    print(f"paper protocol from the HF cache: {time.perf_counter() - started:.1f} s")
    return workdir, hf_home, log, result.stdout + result.stderr


def test_the_paper_protocol_runs_end_to_end_from_the_cache_without_a_request(paper_run):
    workdir, _, log, output = paper_run
    config = load_config([workdir / "config.yaml", workdir / "sizes.yaml"])
    assert job_stats(output) == {
        "fetch": 2, "data": 1, "train": len(config["experiments"]), "flops": 1, "tables": 1, "figures": 1, "all": 1,
    }  # fmt: skip
    assert network_attempts(log) == []

    results = workdir / "results"
    model = json.loads((results / "fetch" / "models" / f"{MODEL_ID}.json").read_text())
    dataset = json.loads((results / "fetch" / "datasets" / "nyu-mll--glue--sst2.json").read_text())
    assert (model["commit"], model["source"]) == (MODEL_COMMIT, "cache")
    assert (dataset["commit"], dataset["source"]) == (DATASET_COMMIT, "cache")

    runs = sorted(results.glob("runs/sst2/*/*/seed0/metrics.json"))
    assert len(runs) == len(config["experiments"])
    for path in runs:
        metrics = json.loads(path.read_text())
        assert metrics["sources"] == {
            "model": {"id": MODEL_ID, "revision": MODEL_COMMIT},
            "tokenizer": {"id": MODEL_ID, "revision": MODEL_COMMIT},
            "dataset": {"id": DATASET_ID, "config": "sst2", "revision": DATASET_COMMIT},
        }
        assert metrics["validation"]["total"] == 24  # every example of the seeded validation split
        assert "versions" in metrics and "git_commit" in metrics

    with open(results / "tables" / "summary.csv") as handle:
        summary = list(csv.DictReader(handle))
    assert len(summary) == len(config["experiments"])
    assert {(row["model_revision"], row["dataset_revision"]) for row in summary} == {(MODEL_COMMIT, DATASET_COMMIT)}
    assert MODEL_COMMIT in (results / "tables" / "summary.md").read_text()
    figures = list((results / "figures").rglob("*.png"))
    assert figures and all(figure.stat().st_size > 0 for figure in figures)


def test_changing_a_pin_reruns_exactly_what_depends_on_it(paper_run):
    workdir, hf_home, _, _ = paper_run
    log = workdir / "network-dry-runs.log"
    n_experiments = len(load_config([workdir / "config.yaml"])["experiments"])

    def planned(*config: str):
        arguments = ("--dry-run", "--configfile", "sizes.yaml", "--config", *config)
        result = snakemake_offline(workdir, hf_home, log, *arguments)
        return job_stats(result.stdout + result.stderr)

    # Pinning the model to the commit it resolved to: its fetch and everything that loads the model.
    assert planned(f"revisions={{{MODEL_ID}: {MODEL_COMMIT}}}") == {
        "fetch": 1, "data": 1, "train": n_experiments, "flops": 1, "tables": 1, "figures": 1, "all": 1,
    }  # fmt: skip
    # Pinning the data set: its fetch, the data and every run, but not the model's FLOPs.
    assert planned(f"tasks={{sst2: {{name: glue/sst2, revision: {DATASET_COMMIT}}}}}") == {
        "fetch": 1, "data": 1, "train": n_experiments, "tables": 1, "figures": 1, "all": 1,
    }  # fmt: skip


def test_a_pinned_revision_missing_from_the_cache_stops_the_fetch_and_nothing_downstream_runs(paper_run):
    workdir, hf_home, _, _ = paper_run
    log = workdir / "network-pin-missing.log"
    pins = workdir / "pin-missing.yaml"
    pins.write_text(yaml.safe_dump({"revisions": {MODEL_ID: PIN_MISSING}, "results": "results-pinned"}))
    started = time.perf_counter()
    result = snakemake_offline(
        workdir, hf_home, log, "--cores", "2", "--configfile", "sizes.yaml", str(pins.name), check=False
    )
    seconds = time.perf_counter() - started
    assert result.returncode != 0
    results = workdir / "results-pinned"
    assert not (results / "data").exists() and not (results / "runs").exists() and not (results / "flops").exists()
    message = (results / "logs" / "fetch" / "models" / f"{MODEL_ID}.log").read_text().strip().splitlines()
    assert len(message) == 1 and MODEL_ID in message[0] and PIN_MISSING in message[0], message
    assert "snakemake --until fetch" in message[0]
    assert seconds < 60, f"{seconds:.0f} s"
