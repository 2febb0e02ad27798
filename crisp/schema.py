"""The configuration schema (crisp/schemas/config.schema.yaml): where it is, its defaults, and the
one way two layers of configuration merge.

The bottom of the configuration modules: crisp.tasks resolves tasks with it, and crisp.config
validates with both, so neither has to import the other (the import graph of crisp has no circle).
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

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


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def schema_defaults(section: str) -> dict:
    """The schema's defaults for one top-level section (e.g. "training"), nested ones included; for a
    map of named items (tasks), the defaults of one item.

    For library callers that pass a partial section; a validated configuration already has them.
    """

    def defaults(schema: dict) -> dict:
        if "properties" not in schema and isinstance(schema.get("additionalProperties"), dict):
            schema = schema["additionalProperties"]  # a map of names to items (tasks): the item's defaults
        result = {}
        for key, sub in schema.get("properties", {}).items():
            if sub.get("type") == "object" and "properties" in sub:
                result[key] = merge(sub.get("default", {}), defaults(sub))
            elif "default" in sub:
                result[key] = copy.deepcopy(sub["default"])
        return result

    return defaults(load_schema()["properties"][section])
