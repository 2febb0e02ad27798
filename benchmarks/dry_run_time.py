"""How long Snakemake takes to plan nothing: `snakemake -n` on a finished run, median of 5.

    python benchmarks/dry_run_time.py [--configfile config/demo.yaml]

Run it after the run has finished (the demo by default). Loading the Snakefile imports no ML
library, so this is Snakemake's own start-up plus the DAG check; every `-n`, every `--lint`
and, on a cluster, every job that re-parses the workflow pays it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", default="config/demo.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    command = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", args.configfile]
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        seconds.append(time.perf_counter() - started)
        if result.returncode != 0:
            print(result.stdout[-2000:], result.stderr[-2000:], file=sys.stderr)
            return 1
    planned = (
        "nothing to be done"
        if "Nothing to be done" in result.stdout + result.stderr
        else "jobs pending (run the workflow first)"
    )
    print(
        f"snakemake -n --configfile {args.configfile}: median {statistics.median(seconds):.2f} s "
        f"(min {min(seconds):.2f}, max {max(seconds):.2f}, {args.repeats} runs; {planned})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
