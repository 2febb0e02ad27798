"""Load, merge and validate a Crisp configuration.

One schema (crisp/schemas/config.schema.yaml) is the single source of truth for keys and
defaults. The Snakefile and every `crisp` sub-command validate through `validate_config`, so a
bad configuration stops before any job runs, with a message naming the key.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from crisp.errors import ConfigError
from crisp.schema import SCHEMA_PATH, merge, schema_defaults  # noqa: F401 (merge, schema_defaults re-exported)
from crisp.tasks import hub_dataset, resolve_task

# What a configuration may hold, checked as it is read (in bounded memory, before the schema or
# Snakemake sees it): the schema's own maxLength for paths is PATH_MAX; label names are the longest lists.
MAX_DEPTH = 32
MAX_TEXT = 4096
MAX_VALUES = 1_000_000
MAX_FILE_BYTES = 64 * 2**20


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that also rejects a key given twice in one mapping (PyYAML keeps the last
    silently) and nesting deeper than MAX_DEPTH (PyYAML recurses: 500 levels are a RecursionError),
    each as a YAML error with the line."""

    _depth = 0

    def compose_node(self, parent, index):
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"values are nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` merges keys that the mapping's own keys may override
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: SafeLoader's own error names it
                if earlier is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"the key {key!r} is given twice in one mapping (first on line {earlier.start_mark.line + 1}); "
                        "keep one (a later one would silently replace the earlier)",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep)


def _unique_json_object(pairs: list) -> dict:
    """json's object_pairs_hook: like dict(pairs), but a key given twice is an error (json keeps the last)."""
    data = {}
    for key, value in pairs:
        if key in data:
            raise ConfigError(f"the key {key!r} is given twice in one object; keep one")
        data[key] = value
    return data



def parse_override(text: str) -> dict:
    """Turn "training.learning_rate=3e-5" into {"training": {"learning_rate": 3e-05}}.

    The value is read as YAML, so numbers, booleans, null and lists work as in config.yaml.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    try:
        value = yaml.load(raw, Loader=ConfigLoader) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value cannot be parsed: {_yaml_problem(error)}") from None
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
    """One configuration file, checked as it is read: a key given twice, nesting deeper than
    MAX_DEPTH and values past the limits are errors naming the file (and line, or key)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file {path} does not exist")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ConfigError(
            f"configuration file {path} is {path.stat().st_size / 2**20:.0f} MiB, more than a configuration "
            f"may be ({MAX_FILE_BYTES // 2**20} MiB)"
        )
    try:
        # JSON is YAML, but PyYAML (YAML 1.1) reads JSON's 1e-05 as a string: parse JSON as JSON.
        if path.suffix == ".json":
            data = json.loads(path.read_text(), object_pairs_hook=_unique_json_object)
        else:
            data = yaml.load(path.read_text(), Loader=ConfigLoader)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"configuration file {path} cannot be parsed: line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None
    except RecursionError:
        raise ConfigError(
            f"configuration file {path} cannot be parsed: values are nested deeper than {MAX_DEPTH} levels"
        ) from None
    except ConfigError as error:
        raise ConfigError(f"configuration file {path} cannot be parsed: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"configuration file {path} cannot be parsed: {_yaml_problem(error)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path} must hold a mapping of keys, not {type(data).__name__}")
    try:
        check_values(data)
    except ConfigError as error:
        raise ConfigError(f"configuration file {path}: {error}") from None
    return data


def check_config_files(paths: Iterable[str | Path]) -> None:
    """Read each file as read_yaml does, for its errors: the Snakefile's config is merged by Snakemake,
    whose YAML loader keeps the last of two equal keys without a word."""
    for path in paths:
        read_yaml(path)


def check_values(config) -> None:
    """Every value is finite and within the limits (MAX_DEPTH, MAX_TEXT, MAX_VALUES): walked without
    recursion, and stopped at the first problem, so a huge or deep value costs no more than reading it.
    Shared values (YAML aliases) are walked each time they appear, as every later step would."""
    stack = [((), config)]
    seen = 0
    while stack:
        path, value = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ConfigError(f"the configuration holds more than {MAX_VALUES:,} values; is a file repeated in it?")
        if len(path) > MAX_DEPTH:
            raise ConfigError(
                f"config key '{_dotted(path)}': values are nested deeper than {MAX_DEPTH} levels"
            )
        if isinstance(value, dict):
            stack.extend(((*path, str(key)), item) for key, item in value.items())
            for key in value:
                if isinstance(key, str) and len(key) > MAX_TEXT:
                    raise ConfigError(
                        f"config key '{_dotted(path)}': a key of {len(key):,} characters (at most {MAX_TEXT})"
                    )
        elif isinstance(value, (list, tuple)):
            stack.extend(((*path, str(index)), item) for index, item in enumerate(value))
        elif isinstance(value, str) and len(value) > MAX_TEXT:
            raise ConfigError(
                f"config key '{_dotted(path)}': a text of {len(value):,} characters, more than the {MAX_TEXT} allowed"
            )
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(
                f"config key '{_dotted(path)}': {value} is not a finite number: give one within the schema's bounds"
            )


def _dotted(path: tuple[str, ...]) -> str:
    """A key path for a message: long ones shortened (a 1,000-deep path is not one line)."""
    parts = [part if len(part) <= 40 else part[:37] + "..." for part in path]
    if len(parts) > 8:
        parts = [*parts[:4], "...", *parts[-2:]]
    return ".".join(parts) or "(top level)"


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: where, and what is wrong."""
    mark = getattr(error, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    text = f"{where}{problem}" + (f" ({context})" if context else "")
    return " ".join(text.split())


def _key_path(error) -> str:
    """The dotted key an error is about, from jsonschema's structured fields (not its message)."""
    parts = [str(p) for p in error.absolute_path]
    instance = error.instance if isinstance(error.instance, dict) else {}
    if error.validator == "required":
        missing = [key for key in error.validator_value if key not in instance]
        parts += missing[:1]
    elif error.validator == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        unknown = sorted(str(key) for key in instance if key not in known)
        parts += unknown[:1]
    elif "propertyNames" in error.schema_path:
        parts.append(str(error.instance))  # a name that is not allowed: the name is the key
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
    if (
        error.validator == "type"
        and isinstance(error.instance, str)
        and re.fullmatch(r"[-+]?[\d.]+[eE][-+]?\d+", error.instance)
    ):
        # YAML 1.1 wants a decimal point and a signed exponent in a float.
        hint = f" (YAML reads {error.instance} as text: write it as {float(error.instance):.1e})"
    if "propertyNames" in error.schema_path:
        hint = " (names may hold only letters, digits, _ and -: they become folder names)"
    if error.validator in ("pattern", "maxLength") and isinstance(error.instance, str):
        # jsonschema's message repeats the whole value and the regular expression: say it for people.
        shown = repr(error.instance if len(error.instance) <= 60 else error.instance[:57] + "...")
        problem = (
            error.schema.get("patternProblem", "is not allowed")
            if error.validator == "pattern"
            else f"is longer than {error.validator_value} characters"
        )
        return ConfigError(f"config key '{_key_path(error)}': {shown} {problem}")
    return ConfigError(f"config key '{_key_path(error) or '(top level)'}': {error.message}{hint}")


def validate_config(config: dict) -> dict:
    """Validate against the schema, fill in defaults (in place) and check cross-key rules.

    A task, experiment or sweep set to null is removed: a later file can drop one that an earlier
    file defines (Snakemake merges config files, so config.yaml's are always there otherwise).
    Sweeps are expanded into experiments here, so everything downstream sees plain experiments.
    Imports nothing heavy: the Snakefile validates on every parse.
    """
    import jsonschema

    if not isinstance(config, dict):
        raise ConfigError(f"the configuration must be a mapping of keys, not {type(config).__name__}")
    check_values(config)
    for section in ("tasks", "experiments", "sweeps"):
        if isinstance(config.get(section), dict):
            config[section] = {name: spec for name, spec in config[section].items() if spec is not None}
    if isinstance(config.get("experiments"), dict):
        # A configuration validated before holds its sweeps' experiments: expand them afresh.
        config["experiments"] = {
            name: spec
            for name, spec in config["experiments"].items()
            if not (isinstance(spec, dict) and "sweep" in spec)
        }
    if isinstance(config.get("tasks"), dict):
        # Presets first: filled in by the schema, the defaults would hide a preset's values.
        config["tasks"] = {
            name: resolve_task(spec, where=f"tasks.{name}") if isinstance(spec, dict) else spec
            for name, spec in config["tasks"].items()
        }
    best = jsonschema.exceptions.best_match(_validator().iter_errors(config))
    if best is not None:
        raise _schema_error(best)

    _pin_models(config)
    _check_dataset_revisions(config["tasks"])

    from crisp.labels import label_names_problem
    from crisp.layout import model_spec_problem
    from crisp.patterns import ExperimentError, check_experiment

    for name, task in config["tasks"].items():
        problem = label_names_problem(task["label_names"]) if task.get("label_names") else None
        if problem:
            raise ConfigError(f"config key 'tasks.{name}.label_names': {problem}")

    for index, model in enumerate(config["models"]):
        problem = model_spec_problem(model)
        if problem:
            raise ConfigError(f"config key 'models.{index}': {problem}")
    slugs = {}
    from crisp.layout import model_slug

    for index, model in enumerate(config["models"]):
        other = slugs.setdefault(model_slug(model), model)
        if other != model:
            raise ConfigError(
                f"config key 'models.{index}': {model!r} and {other!r} would share the folder {model_slug(model)!r}"
            )

    for sweep, spec in config["sweeps"].items():
        for sparsity in spec["sparsities"]:
            name = sweep_experiment_name(sweep, sparsity)
            if name in config["experiments"]:
                raise ConfigError(
                    f"config key 'sweeps.{sweep}': it expands to experiment {name!r}, which is already defined under "
                    f"'experiments'; rename the sweep or the experiment"
                )
            config["experiments"][name] = {
                "pattern": spec["pattern"],
                "sparsity": sparsity,
                "options": dict(spec["options"]),
                "apply": spec["apply"],
                "attention_dropout": None,
                "sweep": sweep,
            }
    for name, experiment in config["experiments"].items():
        where = f"sweeps.{experiment['sweep']}" if "sweep" in experiment else f"experiments.{name}"
        try:
            check_experiment({key: value for key, value in experiment.items() if key != "sweep"})
        except ExperimentError as error:
            raise ConfigError(f"config key '{where}.{error.key}': {error}") from None
        experiment.setdefault("sparsity", None)
    if config["baseline"] not in config["experiments"]:
        raise ConfigError(
            f"config key 'baseline': {config['baseline']!r} is not one of the experiments "
            f"({', '.join(config['experiments'])}); name the experiment the others are compared with"
        )
    return config


def _pin_models(config: dict) -> None:
    """Model entries written {id, revision} become their id, the revision moving to `revisions`:
    every stage sees models as spec strings and finds a pin in one place."""
    from crisp.layout import is_hub_model

    revisions = config["revisions"]
    models: list[str] = []
    for index, model in enumerate(config["models"]):
        if isinstance(model, dict):
            spec, revision = model["id"], model.get("revision")
            if revision is not None and revisions.setdefault(spec, revision) != revision:
                raise ConfigError(
                    f"config key 'models.{index}.revision': {revision!r}, but revisions.{spec} is "
                    f"{revisions[spec]!r}; pin the model in one place"
                )
            model = spec
        if model in models:
            raise ConfigError(f"config key 'models.{index}': {model!r} is listed twice")
        models.append(model)
    config["models"] = models
    for spec in revisions:
        if spec not in models or not is_hub_model(spec):
            hub = [model for model in models if is_hub_model(model)]
            raise ConfigError(
                f"config key 'revisions.{spec}': not one of the configuration's Hub models "
                f"({', '.join(hub) or 'none'}); a Hub data set's revision is its task's `revision` key"
            )


def _check_dataset_revisions(tasks: dict) -> None:
    """Tasks that read the same Hub data set (repository and configuration) must agree on its revision:
    it is fetched once."""
    pinned: dict[tuple, tuple[str, str | None]] = {}
    for name, spec in tasks.items():
        source = hub_dataset(spec["name"])
        if source is None:
            continue
        other, revision = pinned.setdefault(source, (name, spec["revision"]))
        if revision != spec["revision"]:
            raise ConfigError(
                f"config key 'tasks.{name}.revision': {spec['revision']!r}, but task {other!r} reads the same "
                f"data set ({spec['name']}) at {revision!r}; give both the same revision"
            )


def sweep_experiment_name(sweep: str, sparsity: float) -> str:
    """topk_sweep at 0.6 -> topk_sweep_60; 0.95 -> topk_sweep_95; 0.125 -> topk_sweep_12.5"""
    percent = round(sparsity * 100, 6)
    return f"{sweep}_{percent:g}".replace(".", "p")


def load_config(paths: Iterable[str | Path] = (), overrides: Iterable[str] = (), base: dict | None = None) -> dict:
    """Merge YAML files (later ones win), then `key.path=value` overrides, then validate."""
    config = copy.deepcopy(base) if base else {}
    for path in paths:
        config = merge(config, read_yaml(path))
    for text in overrides:
        config = merge(config, parse_override(text))
    return validate_config(config)
