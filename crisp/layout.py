"""Where every output of the pipeline lives, under the configuration's `results` folder.

    fetch/models/<model>.json, fetch/datasets/<repository>--<config>.json
                                                      what a Hub download resolved: commit, files, sizes
    data/<task>/<tokenizer>/                          tokenised cache (Arrow) + stats.json
    runs/<task>/<model>/<experiment>/seed<seed>/      one fine-tuning run (crisp.runs owns its files)
    checkpoints/<task>/<model>/<experiment>/seed<seed>/   resume state, not an output
    flops/<model>/<experiment>.json                   FLOP account of one model and experiment
    tables/                                           runs.csv, summary.*, flops.*
    figures/                                          sparsity_effects, per (task, model), per model

The train stage writes run folders, so its output folder is `runs/` (a folder of runs reads
better than a folder called `train/`). Model and tokenizer names are made safe for paths by
`model_slug`. This module imports nothing heavy: the Snakefile uses it to name every file of
the DAG without loading torch.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from crisp.families import TINY_NAMES

BUNDLED_MODELS = ("minilm",)
TINY_ARCHITECTURES = tuple(TINY_NAMES)
# The tiny test models have no vocabulary of their own: they borrow the bundled MiniLM's.
BUNDLED_TOKENIZER = "bundled:minilm"

# In the order crisp.runs writes them: metrics.json last, so its presence means the run is complete.
RUN_FILES = ("attention.json", "history.csv", "predictions.csv", "metrics.json")
TABLES = (
    "runs.csv",
    "summary.csv",
    "summary.md",
    "summary.tex",
    "pooled.csv",
    "pooled.md",
    "flops.csv",
    "flops.md",
)
# The figure that answers the question, over every task and model.
OVERVIEW_FIGURES = ("sparsity_effects",)
# Drawn once per (task, model).
TASK_MODEL_FIGURES = (
    "metric_vs_sparsity",
    "validation_loss_curves",
    "loss_gap",
    "attention_maps",
    "reliability",
    "attention_entropy",
)
# Drawn once per model, under figures/flops/<model>.
FLOPS_FIGURE = "flops_breakdown"
FIGURE_FORMATS = ("png", "pdf")


def model_slug(spec: str) -> str:
    """A path-safe name for a model or tokenizer spec.

    `bundled:minilm` -> bundled-minilm, `tiny:bert` -> tiny-bert, a Hub id `org/name` -> org--name
    (the Hugging Face cache's convention), a local folder -> <basename>-<8 hex of its full path>
    (two folders can share a basename).
    """
    spec = str(spec).strip()
    if spec.startswith(("bundled:", "tiny:")):
        name = spec.replace(":", "-")
    elif is_local_path(spec):
        resolved = Path(spec).expanduser().resolve()
        name = f"{resolved.name}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"
    else:
        name = spec.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


# "namespace/name" or "name", as the Hub allows them.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def is_local_path(spec: str) -> bool:
    """Whether a spec names a folder rather than a Hub id: it exists, starts like a path, or has a
    shape no Hub id has (a Hub id `namespace/name` also contains a slash)."""
    if spec.startswith(("bundled:", "tiny:")):
        return False
    if Path(spec).expanduser().is_dir() or spec.startswith((".", "~", "/")):
        return True
    return not _HUB_ID.match(spec)


def is_hub_model(spec: str) -> bool:
    """Whether a model spec is a Hub id (and so has a fetch job), rather than bundled, tiny or a folder."""
    spec = str(spec).strip()
    return not spec.startswith(("bundled:", "tiny:")) and not is_local_path(spec)


def model_spec_problem(spec: str) -> str | None:
    """Why a model spec cannot be used, or None; checked before any job runs (no network)."""
    spec = str(spec).strip()
    if not spec:
        return "is empty: give a Hub id, a local folder, 'bundled:minilm' or tiny:<architecture>"
    for prefix, known in (("bundled:", BUNDLED_MODELS), ("tiny:", TINY_ARCHITECTURES)):
        if spec.startswith(prefix):
            name = spec[len(prefix) :]
            if name not in known:
                return f"{spec!r} is not known; available: {', '.join(prefix + k for k in known)}"
            return None
    if is_local_path(spec) and not Path(spec).expanduser().is_dir():
        return f"{spec!r} looks like a folder but does not exist (relative paths start from the working directory)"
    if "{" in spec or "}" in spec:
        # A local folder's files are inputs of its train jobs, where Snakemake reads braces as wildcards.
        return f"{spec!r} cannot be used: a model spec may not hold {{ or }} (Snakemake reads them as wildcards)"
    return None


def tokenizer_of(model_spec: str) -> str:
    """The tokenizer a model uses: its own, except the tiny models, which borrow MiniLM's."""
    return BUNDLED_TOKENIZER if str(model_spec).startswith(("tiny:", "bundled:")) else str(model_spec)


def fetch_model_path(results: str, model: str) -> str:
    """What the fetch of a Hub model recorded: its resolved commit and files."""
    return f"{results}/fetch/models/{model_slug(model)}.json"


def dataset_slug(repository: str, config: str | None) -> str:
    """nyu-mll/glue, sst2 -> nyu-mll--glue--sst2"""
    return model_slug(repository) + (f"--{model_slug(config)}" if config else "")


def fetch_dataset_path(results: str, repository: str, config: str | None) -> str:
    return f"{results}/fetch/datasets/{dataset_slug(repository, config)}.json"


def data_dir(results: str, task: str, tokenizer: str) -> str:
    return f"{results}/data/{task}/{model_slug(tokenizer)}"


def run_dir(results: str, task: str, model: str, experiment: str, seed: int | str) -> str:
    return f"{results}/runs/{task}/{model_slug(model)}/{experiment}/seed{seed}"


def checkpoint_dir(results: str, task: str, model: str, experiment: str, seed: int | str) -> str:
    """Resume checkpoints: outside the run's outputs, which Snakemake deletes before a rerun."""
    return f"{results}/checkpoints/{task}/{model_slug(model)}/{experiment}/seed{seed}"


def flops_path(results: str, model: str, experiment: str) -> str:
    return f"{results}/flops/{model_slug(model)}/{experiment}.json"


def table_paths(results: str) -> list[str]:
    return [f"{results}/tables/{name}" for name in TABLES]


def figure_names(tasks, models) -> list[str]:
    """Every figure (without extension) relative to the figures folder, for these tasks and models."""
    names = list(OVERVIEW_FIGURES)
    names += [
        f"{task}/{model_slug(model)}/{figure}" for task in tasks for model in models for figure in TASK_MODEL_FIGURES
    ]
    names += [f"flops/{model_slug(model)}" for model in models]
    return names
