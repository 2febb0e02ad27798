"""Faults injected into the pipeline, rerun as a user would: Snakemake itself interrupted
(SIGINT) or killed with its jobs (SIGKILL), and a second Snakemake started on the same results
folder while the first runs.

Each interrupted pipeline is a small slice of the smoke matrix (one task, one model, two
experiments, one seed). Rerun to completion, its runs must equal the smoke pipeline's
uninterrupted runs of the same settings: byte-identical predictions and the same metrics apart
from timings (fine-tuning on the CPU is deterministic for a given seed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from workflow_helpers import copy_repository, run_snakemake

pytestmark = pytest.mark.pipeline

SMOKE = ".test/config.yaml"
SLICE = {"tasks": {"pairs": None}, "models": ["tiny:bert"], "seeds": [0]}
# Keys of metrics.json that measure the machine, not the result.
TIMING_KEYS = {"wall_time_s", "train_examples_per_s", "achieved_flops_per_s", "peak_memory_mb", "mfu", "command"}


# `python -m snakemake ARGS`, with Ctrl-C raising KeyboardInterrupt even where SIGINT was ignored.
SNAKEMAKE_WITH_CTRL_C = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'snakemake'; runpy.run_module('snakemake', run_name='__main__', alter_sys=True)"
)


def start_snakemake(workdir: Path) -> subprocess.Popen:
    # A session of its own, so that a kill can take Snakemake and every job it started. SIGINT as at
    # a terminal: a shell that starts the tests in the background (`bash .ci/run &`) ignores it, and
    # a Python started with SIGINT ignored never raises KeyboardInterrupt, so Ctrl-C would do nothing.
    command = [sys.executable, "-c", SNAKEMAKE_WITH_CTRL_C, "--cores", "2", "--configfile", SMOKE, "slice.yaml"]
    return subprocess.Popen(
        command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def wait_for(condition, timeout_s: float = 300, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def interrupt(process: subprocess.Popen, every_s: float = 2.0, timeout_s: float = 120) -> None:
    """Ctrl-C, pressed again every few seconds until Snakemake says it is terminating, as a user
    would (a single SIGINT was seen lost once); once Snakemake has it, no second one interrupts its
    clean-up."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        if not any("Terminating processes on user request" in line for line in lines):
            process.send_signal(signal.SIGINT)
        time.sleep(every_s)


def training_runs(results: Path) -> set[Path]:
    """Run folders of the checkpoints tree that hold a complete checkpoint: train jobs mid-training."""
    return {path.parents[1] for path in results.glob("checkpoints/*/*/*/seed*/checkpoint-*/trainer_state.json")}


def comparable(metrics: dict) -> dict:
    metrics = {key: value for key, value in metrics.items() if key not in TIMING_KEYS}
    metrics.pop("resumed_from_step", None)
    return metrics


def assert_same_runs(results: Path, reference: Path) -> None:
    runs = sorted(results.glob("runs/*/*/*/seed*/metrics.json"))
    assert len(runs) == 2, runs
    for metrics_path in runs:
        relative = metrics_path.parent.relative_to(results)
        expected = reference / relative
        assert (metrics_path.parent / "predictions.csv").read_bytes() == (expected / "predictions.csv").read_bytes(), (
            relative
        )
        assert comparable(json.loads(metrics_path.read_text())) == comparable(
            json.loads((expected / "metrics.json").read_text())
        )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The slice run once without interruption."""
    workdir = copy_repository(tmp_path_factory.mktemp("reference") / "repo")
    (workdir / "slice.yaml").write_text(yaml.safe_dump(SLICE))
    run_snakemake(workdir, "--cores", "2", "--configfile", SMOKE, "slice.yaml")
    return workdir / "results" / "smoke"


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_interrupted_snakemake_finishes_on_rerun_with_identical_results(tmp_path, reference, how):
    workdir = copy_repository(tmp_path / "repo")
    (workdir / "slice.yaml").write_text(yaml.safe_dump(SLICE))
    results = workdir / "results" / "smoke"
    first = start_snakemake(workdir)
    try:
        if how == "SIGINT":
            # While the first runs, a second Snakemake on the same folder stops at the lock.
            wait_for(lambda: any((workdir / ".snakemake" / "locks").glob("*")), what="the first Snakemake's lock")
            second = run_snakemake(workdir, "--cores", "2", "--configfile", SMOKE, "slice.yaml", check=False)
            assert second.returncode != 0 and "cannot be locked" in second.stdout + second.stderr
        # Interrupt while fine-tuning runs: every train job of the slice has saved a checkpoint. Then every
        # job that could start before them (data, flops) has finished and Snakemake only waits for the
        # trains. (While it starts or finishes a job it runs an asyncio loop that handles SIGINT itself:
        # a SIGINT sent at a mere moment, such as a train log appearing, was sometimes lost there.)
        trains = len(list(reference.glob("runs/*/*/*/seed*")))
        wait_for(lambda: len(training_runs(results)) == trains, what="every train job to save a checkpoint")
        assert not list(results.glob("runs/**/metrics.json"))  # still mid-training
        if how == "SIGINT":
            interrupt(first)
        else:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode != 0
    assert not (results / "tables" / "summary.csv").exists()  # stopped before the end

    if how == "SIGKILL":
        # Snakemake had no chance to release its lock: the README says to unlock first.
        locked = run_snakemake(workdir, "--cores", "2", "--configfile", SMOKE, "slice.yaml", check=False)
        assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
        run_snakemake(workdir, "--unlock", "--configfile", SMOKE, "slice.yaml")
    # The default profile reruns incomplete jobs on its own.
    run_snakemake(workdir, "--cores", "2", "--configfile", SMOKE, "slice.yaml")
    assert_same_runs(results, reference)
    if how == "SIGKILL":  # killed with Snakemake, the train jobs resumed from their checkpoints
        for metrics_path in results.glob("runs/*/*/*/seed*/metrics.json"):
            assert json.loads(metrics_path.read_text())["resumed_from_step"] > 0, metrics_path
