"""What each stage reads: one function per stage computes it from a validated configuration.

The Snakemake rule declares the result as its `params:` and passes it, as JSON on standard input
(`--settings -`; one command-line argument may not exceed 128 KiB, and 12,000 label names do), to the
`crisp` sub-command, which uses exactly that and nothing else. So every key a stage reads is a key whose
change reruns the stage, and no other key is (threads, memory and time limits are resources, not
settings: they never rerun a job). The library and the command line compute the same settings
from a configuration file (`crisp train --config config.yaml --task sst2 ...`).

Imports nothing heavy: the Snakefile calls these functions for every job when it loads.
"""

from __future__ import annotations

import copy
import json

from crisp.errors import ConfigError
from crisp.layout import fetch_dataset_path, fetch_model_path, is_hub_model, tokenizer_of
from crisp.tasks import hub_dataset, resolve_task

# training keys that decide how a job runs on its machine, not what it computes.
TRAINING_RESOURCES = ("threads", "mem_mb", "runtime_min", "keep_checkpoints")


def _require(config: dict, section: str, name: str) -> None:
    names = config[section] if isinstance(config[section], (dict, list)) else []
    if name not in names:
        raise ConfigError(
            f"{section[:-1]} {name!r} is not in the configuration's {section} ({', '.join(map(str, names))})"
        )


def fetch_settings(config: dict) -> dict[str, dict]:
    """The fetch stage: one entry per Hub model and per Hub data set (repository and configuration),
    keyed by its record's path under <results>/fetch/ without .json (models/<model>,
    datasets/<repository>--<config>). Bundled, tiny, local and synthetic inputs need no fetch."""
    results = config["results"]
    fetches = {}
    for model in config["models"]:
        if is_hub_model(model):
            path = fetch_model_path(results, model)
            fetches[path] = {"kind": "model", "id": model, "config": None, "revision": config["revisions"].get(model)}
    for spec in config["tasks"].values():
        spec = resolve_task(spec)
        if (source := hub_dataset(spec["name"])) is not None:
            repository, dataset_config = source
            path = fetch_dataset_path(results, repository, dataset_config)
            fetches[path] = {
                "kind": "dataset", "id": repository, "config": dataset_config, "revision": spec["revision"]
            }
    prefix = f"{results}/fetch/"
    return {path[len(prefix) : -len(".json")]: settings for path, settings in fetches.items()}


def fetch_inputs(config: dict, *, task: str | None = None, model: str | None = None) -> list[str]:
    """The fetch records a job reads: its task's Hub data set, and its model's (or tokenizer's) Hub files."""
    results = config["results"]
    paths = []
    if task is not None:
        source = hub_dataset(resolve_task(config["tasks"][task])["name"])
        if source is not None:
            paths.append(fetch_dataset_path(results, *source))
    if model is not None and is_hub_model(model):
        paths.append(fetch_model_path(results, model))
    return paths


def data_settings(config: dict, task: str, tokenizer: str) -> dict:
    """The data stage: one task's data, tokenised by one tokenizer."""
    _require(config, "tasks", task)
    return {
        "task": task,
        "dataset": resolve_task(config["tasks"][task]),
        "tokenizer": tokenizer,
        "tokenizer_revision": config["revisions"].get(tokenizer),
        "max_length": config["max_length"],
    }


def train_settings(config: dict, task: str, model: str, experiment: str, seed: int) -> dict:
    """The train stage: everything that decides one run's result (and its resume checkpoints)."""
    _require(config, "tasks", task)
    _require(config, "models", model)
    _require(config, "experiments", experiment)
    return {
        "task": task,
        "dataset": resolve_task(config["tasks"][task]),
        "model": model,
        "model_revision": config["revisions"].get(model),
        "tokenizer": tokenizer_of(model),
        "max_length": config["max_length"],
        "experiment": experiment,
        "attention": copy.deepcopy(config["experiments"][experiment]),
        "seed": int(seed),
        "training": {key: value for key, value in config["training"].items() if key not in TRAINING_RESOURCES},
    }


def flops_settings(config: dict, model: str) -> dict:
    """The flops stage: one model's FLOP account under every experiment's attention (one job per
    model: the account takes a second, loading the libraries takes longer)."""
    _require(config, "models", model)
    return {
        "model": model,
        "model_revision": config["revisions"].get(model),
        "experiments": copy.deepcopy(config["experiments"]),
        "profiling": copy.deepcopy(config["profiling"]),
    }


def tables_settings(config: dict) -> dict:
    """The tables stage: which experiment is the baseline, each task's primary metric, the statistics."""
    tasks = {}
    for task, spec in config["tasks"].items():
        resolved = resolve_task(spec)
        tasks[task] = {"name": resolved["name"], "metric": resolved["metric"]}
    return {
        "baseline": config["baseline"],
        "tasks": tasks,
        "models": list(config["models"]),
        "experiments": copy.deepcopy(config["experiments"]),
        "statistics": copy.deepcopy(config["statistics"]),
    }


def figures_settings(config: dict) -> dict:
    """The figures stage reads what the tables stage reads (names, metrics, baseline)."""
    return tables_settings(config)


def as_json(settings: dict) -> str:
    """The one text form of settings: what a rule's params hold and a command receives."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


def from_json(text: str, stage: str) -> dict:
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--settings for the {stage} stage is not valid JSON: {error}") from None
    if not isinstance(settings, dict):
        raise ConfigError(f"--settings for the {stage} stage must be a JSON object")
    return settings
