# Configuration validation, names of every file of the DAG, and the few helpers the rules share.
# Loading this imports no torch, transformers, datasets or matplotlib: only the configuration,
# the output layout and the per-stage settings.
from pathlib import Path

from crisp.config import check_config_files, validate_config
from crisp.errors import ConfigError
from crisp.layout import (
    FIGURE_FORMATS,
    FLOPS_FIGURE,
    OVERVIEW_FIGURES,
    RUN_FILES,
    checkpoint_dir,
    data_dir,
    figure_names,
    flops_path,
    model_slug,
    run_dir,
    table_paths,
    tokenizer_of,
)
from crisp.settings import (
    as_json,
    data_settings,
    fetch_inputs,
    fetch_settings,
    figures_settings,
    flops_settings,
    tables_settings,
    train_settings,
)

try:
    # Snakemake's own reading of the files keeps the last of two equal keys: read them again.
    check_config_files(workflow.configfiles)
    validate_config(config)
except ConfigError as error:
    raise WorkflowError(f"Invalid configuration: {error}")

R = config["results"]
TASKS = list(config["tasks"])
EXPERIMENTS = list(config["experiments"])
SEEDS = config["seeds"]
# Path-safe names -> specs, for the wildcards.
MODELS = {model_slug(model): model for model in config["models"]}
TOKENIZERS = {
    model_slug(tokenizer_of(model)): tokenizer_of(model) for model in config["models"]
}

# <kind>/<name> (models/distilbert-base-uncased, datasets/nyu-mll--glue--sst2) -> fetch settings
FETCHES = fetch_settings(config)

RUN_DIRS = [
    run_dir(R, task, model, experiment, seed)
    for task in TASKS
    for model in config["models"]
    for experiment in EXPERIMENTS
    for seed in SEEDS
]
RUN_OUTPUTS = [f"{run}/{name}" for run in RUN_DIRS for name in RUN_FILES]
FLOPS = [
    flops_path(R, model, experiment)
    for model in config["models"]
    for experiment in EXPERIMENTS
]
TABLES = table_paths(R)
FIGURES = figure_names(TASKS, config["models"])
FIGURES_OUT = [
    f"{R}/figures/{name}.{ext}" for name in FIGURES for ext in FIGURE_FORMATS
]


def crisp_sources(*modules):
    """The crisp modules a job runs, besides those every command goes through, declared as
    inputs, so that editing one reruns the rule (Snakemake does not notice edits to imported code).
    """
    common = (
        "cli",
        "config",
        "errors",
        "families",
        "layout",
        "schema",
        "settings",
        "tasks",
    )
    return [
        str(Path(workflow.basedir) / "crisp" / f"{module}.py")
        for module in (*common, *modules)
    ]


def local_data_files(wildcards):
    """A local task's files, so that editing them reruns its data job and what follows."""
    spec = data_settings(config, wildcards.task, TOKENIZERS[wildcards.tokenizer])[
        "dataset"
    ]
    return (
        [spec["train_file"], spec["validation_file"]] if spec["name"] == "local" else []
    )


def local_model_files(wildcards):
    """A local model folder's files, so that replacing its weights in place reruns its runs (the
    resume stamp holds a digest of the same files)."""
    spec = str(MODELS[wildcards.model])
    folder = Path(spec).expanduser()
    if spec.startswith(("tiny:", "bundled:")) or not folder.is_dir():
        return []
    return sorted(str(path) for path in folder.rglob("*") if path.is_file())


def data_fetches(wildcards):
    """The fetch records a data job reads: its Hub data set's and its Hub tokenizer's."""
    return fetch_inputs(
        config, task=wildcards.task, model=TOKENIZERS[wildcards.tokenizer]
    )


def model_fetches(wildcards):
    """The fetch record of a Hub model, for the train and flops jobs."""
    return fetch_inputs(config, model=MODELS[wildcards.model])


def figure_report(name):
    """A figure's place in the HTML report: grouped by task and model, with its caption."""
    parts = name.split("/")
    if parts[0] in OVERVIEW_FIGURES:
        caption, category, subcategory = parts[0], "Summary", None
    elif parts[0] == "flops":
        caption, category, subcategory = FLOPS_FIGURE, "FLOPs", parts[1]
    else:
        caption, category, subcategory = parts[2], f"Task {parts[0]}", parts[1]
    return report(
        f"{R}/figures/{name}.png",
        caption=f"../report/{caption}.rst",
        category=category,
        subcategory=subcategory,
        labels={"figure": caption, "model": subcategory or "all"},
    )


# The tables the HTML report shows (category "Tables"), each with its caption under workflow/report/.
REPORT_TABLES = ("summary.csv", "pooled.csv")


def table_report(path):
    """A table's place in the HTML report: its caption renders the CSV as a table."""
    name = Path(path).name
    if name not in REPORT_TABLES:
        return path
    return report(
        path,
        caption=f"../report/{Path(name).stem}.rst",
        category="Tables",
        labels={"table": name},
    )
