"""Publish the offline demo's results in the README, from the files the demo run wrote.

    snakemake --cores all --configfile config/demo.yaml
    python docs/publish_demo.py

Copies results/demo/tables/summary.md and two figures into docs/demo/, puts the summary table
between the README's demo markers, and records in docs/demo/provenance.json a digest of the code
and configuration that produced them. tests/test_readme.py fails when the README's table differs
from the published file or when that code has changed since: the published numbers cannot go
stale silently.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_RESULTS = ROOT / "results" / "demo"
PUBLISHED = ROOT / "docs" / "demo"
START, END = "<!-- demo-summary:start -->", "<!-- demo-summary:end -->"
# Everything that decides the demo's numbers: training, attention, data, metrics, the FLOP model
# behind achieved FLOP/s, the tables' statistics, and the two configuration files the demo layers.
SOURCES = [
    "config.yaml",
    "config/demo.yaml",
    "crisp/schemas/config.schema.yaml",
    *(f"crisp/{module}.py" for module in (
        "attention", "checkpoints", "config", "data", "flops", "kept_attention", "layout", "metrics", "modeling",
        "patterns", "runs", "settings", "stats", "synthetic", "tables", "tabular", "tasks", "train",
    )),
]  # fmt: skip
FIGURES = {
    "sentiment/bundled-minilm/metric_vs_sparsity.png": "metric_vs_sparsity.png",
    "sparsity_effects.png": "sparsity_effects.png",
}


def source_digest(root: Path = ROOT) -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    return digest.hexdigest()


def readme_block(readme: str) -> str:
    if START not in readme or END not in readme:
        raise SystemExit(f"README.md has no {START} ... {END} block")
    return readme.split(START, 1)[1].split(END, 1)[0].strip()


def main() -> int:
    summary = DEMO_RESULTS / "tables" / "summary.md"
    if not summary.is_file():
        print(
            f"{summary} does not exist: run the demo first (snakemake --cores all --configfile config/demo.yaml)",
            file=sys.stderr,
        )
        return 1
    PUBLISHED.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(summary, PUBLISHED / "summary.md")
    for source, target in FIGURES.items():
        shutil.copyfile(DEMO_RESULTS / "figures" / source, PUBLISHED / target)
    (PUBLISHED / "provenance.json").write_text(
        json.dumps(
            {"command": "snakemake --cores all --configfile config/demo.yaml", "source_digest": source_digest()},
            indent=2,
        )
        + "\n"
    )
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    readme_block(readme)  # the markers are there
    before, rest = readme.split(START, 1)
    after = rest.split(END, 1)[1]
    table = (PUBLISHED / "summary.md").read_text().strip()
    readme_path.write_text(f"{before}{START}\n{table}\n{END}{after}")
    print(f"Published the demo's summary and figures in {PUBLISHED.relative_to(ROOT)} and README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
