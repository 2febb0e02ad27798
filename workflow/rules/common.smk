# Configuration validation and the few helpers the rules share.
import hashlib
import json
import os
from pathlib import Path

from crisp.config import run_settings, tokenizer_spec, validate_config
from crisp.data import dataset_slug
from crisp.modeling import model_slug
from crisp.errors import ConfigError
from crisp.figures import FIGURES

try:
    validate_config(config)
except ConfigError as error:
    raise WorkflowError(f"Invalid configuration: {error}")

R = config["results"]
EXPERIMENTS = list(config["experiments"])
SEEDS = config["seeds"]


def write_resolved_config(config: dict) -> str:
    """Save the validated configuration under a name made from its content; every `crisp` call
    reads it. Rules rerun on the `params` they declare (the keys that change their result), not
    on this file. The same content always gives the same file, so concurrent writers agree."""
    text = json.dumps(config, indent=2, sort_keys=True)
    path = Path(R) / "configs" / f"config-{hashlib.sha1(text.encode()).hexdigest()[:12]}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(text)
        partial.replace(path)
    return str(path)


CONFIG_FILE = write_resolved_config(config)
DATA = f"{R}/data/{dataset_slug(config['dataset'])}/{model_slug(tokenizer_spec(config))}"


def crisp_sources(*modules):
    """The crisp modules a rule runs (besides the command line and configuration every rule
    goes through): declared as inputs so that editing one reruns the rule."""
    return [str(Path(workflow.basedir) / "crisp" / f"{module}.py") for module in ("cli", "config", "errors", *modules)]


def local_data_files():
    """A local dataset's files, so that editing them reruns prepare_data and what follows."""
    dataset = config["dataset"]
    return [dataset["train_file"], dataset["validation_file"]] if dataset["name"] == "local" else []


def training_settings(wildcards):
    """Everything that changes a finetune result (not its resources)."""
    return json.dumps(run_settings(config, wildcards.experiment, int(wildcards.seed)), sort_keys=True)


RUN_FILES = ["metrics.json", "history.csv", "predictions.csv", "attention.json"]
RUN_DIRS = [f"{R}/runs/{experiment}/seed{seed}" for experiment in EXPERIMENTS for seed in SEEDS]
FLOPS = [f"{R}/flops/{experiment}.json" for experiment in EXPERIMENTS]
TABLES = [f"{R}/tables/{name}" for name in ("runs.csv", "summary.csv", "summary.md", "summary.tex", "flops.csv", "flops.md")]
FIGURES_OUT = [f"{R}/figures/{name}.{ext}" for name in FIGURES for ext in ("png", "pdf")]
