# Configuration validation, names of every file of the DAG, and the few helpers the rules share.
# Loading this imports no torch, transformers, datasets or matplotlib: only the configuration,
# the output layout and the per-stage settings.
from pathlib import Path

from crisp.config import validate_config
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
    figures_settings,
    flops_settings,
    tables_settings,
    train_settings,
)

try:
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
    common = ("cli", "config", "errors", "families", "layout", "settings", "tasks")
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
