"""Shared by the workflow tests: a copy of the repository to run Snakemake in, and reading
Snakemake's own report of the jobs it plans."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Generated or machine-local: not part of the workflow under test.
NOT_COPIED = shutil.ignore_patterns(
    ".git", "results", "logs", ".snakemake", "__pycache__", "*.egg-info", ".pytest_cache"
)


def copy_repository(destination: Path) -> Path:
    """The checkout without its generated files, so a test's runs never touch the real results."""
    shutil.copytree(REPO, destination, ignore=NOT_COPIED, symlinks=True)
    return destination


def run_snakemake(
    workdir: Path, *args: str, check: bool = True, env: dict | None = None, timeout: int = 900, wrapper=()
) -> subprocess.CompletedProcess:
    """Snakemake in workdir; `wrapper` is a command it runs under (e.g. ["unshare", "-n"])."""
    result = subprocess.run(
        [*wrapper, sys.executable, "-m", "snakemake", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result


def job_stats(output: str) -> Counter:
    """Snakemake's 'Job stats' table (rule -> number of jobs, `all` included); empty when
    Snakemake has nothing to do."""
    if "Job stats:" not in output:
        return Counter()
    table = output.split("Job stats:", 1)[1].split("\ntotal", 1)[0]
    counts = Counter()
    for line in table.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts
