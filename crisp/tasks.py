"""Tasks: what a `tasks:` entry of the configuration means, resolved to a complete TASK SPEC.

A task entry names where its sentences come from (`name`) and how to read them. `resolve_task`
fills in everything else, in this order (later wins):

    the schema's defaults  <  the GLUE preset (for name: glue/<task>)  <  the user's own keys

so `{name: glue/mrpc}` is enough for MRPC, and any preset key can still be overridden.
This module is torch-free: the Snakefile and the settings functions import it while parsing.
"""

from __future__ import annotations

import copy
import functools

from crisp.errors import ConfigError
from crisp.schema import merge, schema_defaults

METRICS = ("accuracy", "mcc", "f1")

# GLUE's own column names, label order (the ClassLabel order of the Hub's "glue" data set) and
# primary metric. STS-B is left out: it is a regression task.
GLUE_PRESETS: dict[str, dict] = {
    "sst2": {"text_column": "sentence", "text_pair_column": None,
             "label_names": ["negative", "positive"], "metric": "accuracy"},
    "cola": {"text_column": "sentence", "text_pair_column": None,
             "label_names": ["unacceptable", "acceptable"], "metric": "mcc"},
    "mrpc": {"text_column": "sentence1", "text_pair_column": "sentence2",
             "label_names": ["not_equivalent", "equivalent"], "metric": "f1"},
    "qqp": {"text_column": "question1", "text_pair_column": "question2",
            "label_names": ["not_duplicate", "duplicate"], "metric": "f1"},
    "rte": {"text_column": "sentence1", "text_pair_column": "sentence2",
            "label_names": ["entailment", "not_entailment"], "metric": "accuracy"},
    "qnli": {"text_column": "question", "text_pair_column": "sentence",
             "label_names": ["entailment", "not_entailment"], "metric": "accuracy"},
    "mnli": {"text_column": "premise", "text_pair_column": "hypothesis",
             "label_names": ["entailment", "neutral", "contradiction"], "metric": "accuracy",
             "validation_split": "validation_matched"},
    "wnli": {"text_column": "sentence1", "text_pair_column": "sentence2",
             "label_names": ["not_entailment", "entailment"], "metric": "accuracy"},
}

# Where the GLUE presets' data live on the Hub: one repository, one configuration per task.
GLUE_REPOSITORY = "nyu-mll/glue"
# Hub data sets whose two-part names are "path/config"; every other "a/b" is a namespace/name.
MULTI_CONFIG_HUB_DATASETS = {"glue": GLUE_REPOSITORY, "super_glue": "super_glue"}
NOT_HUB = ("synthetic", "local")


def hub_dataset(name: str) -> tuple[str, str | None] | None:
    """The Hub repository and configuration of a task's data set name; None for synthetic and local.

        "glue/sst2"                -> ("nyu-mll/glue", "sst2")    (super_glue/boolq likewise)
        "namespace/name"           -> ("namespace/name", None)
        "namespace/name/config"    -> ("namespace/name", "config")
        "name" (imdb)              -> ("name", None)
    """
    if name in NOT_HUB:
        return None
    parts = name.split("/")
    if len(parts) == 2 and parts[0] in MULTI_CONFIG_HUB_DATASETS:
        return MULTI_CONFIG_HUB_DATASETS[parts[0]], parts[1]
    if len(parts) >= 3:
        return "/".join(parts[:-1]), parts[-1]
    return name, None


def task_defaults() -> dict:
    """Every TASK SPEC key but `name`, with its default from the schema's `tasks` item."""
    return copy.deepcopy(_schema_task_defaults())


@functools.cache
def _schema_task_defaults() -> dict:
    return schema_defaults("tasks")


def glue_task(name: str) -> str | None:
    """"glue/mrpc" -> "mrpc"; None for a name that is not a GLUE task."""
    path, _, task = name.partition("/")
    return task if path == "glue" and task else None


def resolve_task(task_config: dict, *, where: str = "task") -> dict:
    """The complete TASK SPEC for one `tasks:` entry (see the module docstring for the order).

    `where` is the entry's key path in the configuration (e.g. "tasks.sst2"), for messages.
    Resolving a resolved spec again returns it unchanged. It is safe on an entry the schema has not
    checked yet (call it before the schema fills defaults in, or those would hide the preset's).
    """
    if not isinstance(task_config, dict):
        raise ConfigError(f"config key '{where}': a task is a mapping such as {{name: glue/sst2}}, "
                          f"not {type(task_config).__name__}")
    if not isinstance(task_config.get("name"), str) or not task_config["name"]:
        raise ConfigError(f"config key '{where}.name': missing or not text; name a GLUE task (glue/sst2), "
                          "a Hub data set, 'synthetic' or 'local'")
    name = task_config["name"]
    preset = {}
    if (glue := glue_task(name)) is not None:
        if glue not in GLUE_PRESETS:
            raise ConfigError(f"config key '{where}.name': unknown GLUE task {name!r}; presets: "
                              f"{', '.join('glue/' + task for task in GLUE_PRESETS)} (STS-B is a regression "
                              "task and is not supported)")
        preset = GLUE_PRESETS[glue]
    elif name == "synthetic":
        preset = _synthetic_preset(task_config)
    spec = {"name": name, **merge(merge(task_defaults(), preset), copy.deepcopy(task_config))}
    _check(spec, where)
    return spec


def _synthetic_preset(task_config: dict) -> dict:
    """The generator's columns and labels; pairs ask whether the second review agrees with the first."""
    synthetic = task_config.get("synthetic")
    synthetic = synthetic if isinstance(synthetic, dict) else {}
    pairs = bool(synthetic.get("pairs", task_defaults()["synthetic"]["pairs"]))
    if pairs:
        return {"text_column": "sentence1", "text_pair_column": "sentence2", "label_names": ["disagree", "agree"]}
    return {"text_column": "sentence", "text_pair_column": None, "label_names": ["negative", "positive"]}


def _check(spec: dict, where: str) -> None:
    """The rules one key's schema cannot state."""
    if spec.get("revision") is not None and hub_dataset(spec["name"]) is None:
        raise ConfigError(f"config key '{where}.revision': only a Hub data set has revisions, not {spec['name']!r}")
    if spec["name"] == "local":
        for key in ("train_file", "validation_file"):
            if not spec.get(key):
                raise ConfigError(f"config key '{where}.{key}': required when {where}.name is 'local'")
    if spec["metric"] not in METRICS:
        raise ConfigError(f"config key '{where}.metric': {spec['metric']!r} is not one of {', '.join(METRICS)}")
    names = spec.get("label_names")
    if spec["metric"] == "f1" and isinstance(names, list) and len(names) != 2:
        raise ConfigError(f"config key '{where}.metric': f1 (of the positive class) needs two labels, "
                          f"but label_names has {len(names)}; use accuracy or mcc")
    if spec["text_pair_column"] is not None and spec["text_pair_column"] == spec["text_column"]:
        raise ConfigError(f"config key '{where}.text_pair_column': the same column as text_column "
                          f"({spec['text_column']!r})")
