"""Load, merge and validate a Crisp configuration.

One schema (crisp/schemas/config.schema.yaml) is the single source of truth for keys and
defaults. The Snakefile and every `crisp` sub-command validate through `validate_config`, so a
bad configuration stops before any job runs, with a message naming the key.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from crisp.errors import ConfigError

SCHEMA_PATH = Path(__file__).parent / "schemas" / "config.schema.yaml"


def merge(base: dict, override: dict) -> dict:
    """Return `base` updated recursively by `override` (nested mappings merge, others replace)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> dict:
    """Turn "training.learning_rate=3e-5" into {"training": {"learning_rate": 3e-05}}.

    The value is read as YAML, so numbers, booleans, null and lists work as in config.yaml.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    value = yaml.safe_load(raw) if raw.strip() else None
    # YAML 1.1 reads "3e-5" as a string; accept the float people mean.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            pass
    nested: Any = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file {path} does not exist")
    try:
        # JSON is YAML, but PyYAML (YAML 1.1) reads JSON's 1e-05 as a string: parse JSON as JSON.
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise ConfigError(f"configuration file {path} cannot be parsed: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def _key_path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else ""
        parts.append(missing)
    if error.validator == "additionalProperties" and "'" in error.message:
        parts.append(error.message.split("'")[1])
    return ".".join(p for p in parts if p)


def _validator():
    """A JSON-schema validator that also fills in the schema's defaults (the jsonschema FAQ
    recipe, as snakemake.utils.validate does), so the library needs no Snakemake to validate."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from check_properties(validator, properties, instance, schema)

    with_defaults = jsonschema.validators.extend(base, {"properties": properties_with_defaults})
    return with_defaults(yaml.safe_load(SCHEMA_PATH.read_text()))


def _schema_error(error) -> ConfigError:
    hint = ""
    if error.validator == "type" and isinstance(error.instance, str) and re.fullmatch(r"[-+]?[\d.]+[eE][-+]?\d+", error.instance):
        # YAML 1.1 wants a decimal point and a signed exponent in a float.
        hint = f" (YAML reads {error.instance} as text: write it as {float(error.instance):.1e})"
    return ConfigError(f"config key '{_key_path(error) or '(top level)'}': {error.message}{hint}")


def validate_config(config: dict) -> dict:
    """Validate against the schema, fill in defaults (in place) and check cross-key rules.

    An experiment set to null is removed: a later file can drop one that an earlier file defines
    (Snakemake merges config files, so config.yaml's experiments are always there otherwise).
    """
    import jsonschema

    if isinstance(config.get("experiments"), dict):
        config["experiments"] = {name: spec for name, spec in config["experiments"].items() if spec is not None}
    best = jsonschema.exceptions.best_match(_validator().iter_errors(config))
    if best is not None:
        raise _schema_error(best)

    from crisp.attention import PATTERNS, SparseAttentionSettings

    for name, experiment in config["experiments"].items():
        if experiment["pattern"] not in PATTERNS:
            raise ConfigError(
                f"config key 'experiments.{name}.pattern': unknown pattern {experiment['pattern']!r}; "
                f"known patterns: {', '.join(sorted(PATTERNS))}"
            )
        # The checks sparsify() makes, first without the options, so the message names the right key.
        for key, options in (("sparsity", {}), ("options", experiment["options"])):
            try:
                SparseAttentionSettings(experiment["pattern"], experiment["sparsity"], options)
            except ValueError as error:
                raise ConfigError(f"config key 'experiments.{name}.{key}': {error}") from None
    dataset = config["dataset"]
    if dataset["name"] == "local":
        for key in ("train_file", "validation_file"):
            if not dataset.get(key):
                raise ConfigError(f"config key 'dataset.{key}': required when dataset.name is 'local'")
    if config["baseline"] not in config["experiments"]:
        raise ConfigError(
            f"config key 'baseline': {config['baseline']!r} is not one of the experiments "
            f"({', '.join(config['experiments'])}); name the experiment the others are compared with"
        )
    return config


def load_config(paths: Iterable[str | Path] = (), overrides: Iterable[str] = (), base: dict | None = None) -> dict:
    """Merge YAML files (later ones win), then `key.path=value` overrides, then validate."""
    config = copy.deepcopy(base) if base else {}
    for path in paths:
        config = merge(config, read_yaml(path))
    for text in overrides:
        config = merge(config, parse_override(text))
    return validate_config(config)


def schema_defaults(section: str) -> dict:
    """The schema's defaults for one top-level section (e.g. "dataset"), nested ones included.

    For library callers that pass a partial section; a validated configuration already has them.
    """

    def defaults(schema: dict) -> dict:
        result = {}
        for key, sub in schema.get("properties", {}).items():
            if sub.get("type") == "object" and "properties" in sub:
                result[key] = merge(sub.get("default", {}), defaults(sub))
            elif "default" in sub:
                result[key] = copy.deepcopy(sub["default"])
        return result

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    return defaults(schema["properties"][section])


def tokenizer_spec(config: dict) -> str:
    return config.get("tokenizer") or config["model"]


def run_settings(config: dict, experiment: str, seed: int) -> dict:
    """The part of the configuration that determines one run's result (and its checkpoints)."""
    return {
        "experiment": experiment,
        "seed": seed,
        "model": config["model"],
        "tokenizer": tokenizer_spec(config),
        "max_length": config["max_length"],
        "dataset": config["dataset"],
        "training": {k: v for k, v in config["training"].items() if k not in ("keep_checkpoints", "threads", "mem_mb", "runtime_min")},
        **{f"attention_{k}": v for k, v in config["experiments"][experiment].items()},
    }


def checkpoint_dir(config: dict, experiment: str, seed: int) -> str:
    """Where a run keeps its resume checkpoints: outside its outputs, which Snakemake deletes
    before rerunning a job."""
    return str(Path(config["results"]) / "checkpoints" / experiment / f"seed{seed}")
