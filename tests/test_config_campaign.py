"""A bad-input campaign for configurations (hypothesis): a valid configuration mutated at random
(wrong types, out-of-range numbers, non-finite numbers, numbers past their upper bound, unknown
keys, missing keys, odd experiment names, a key given twice, label names that differ only in case
or are the same number, unparseable YAML) is rejected by `crisp config`, as by the Snakefile,
before any job runs: one line naming the key (or the file and line, for YAML that does not parse
or repeats a key), exit code 1, no traceback.

The cases tried and rejected are counted and printed at the end of the module's run:
    python -m pytest -q tests/test_config_campaign.py
The examples are derandomised, so the counts repeat with the same hypothesis version.
"""

from __future__ import annotations

import collections
import copy
import re
from pathlib import Path

import pytest
import yaml
from campaign_helpers import report_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crisp.cli import main

ROOT = Path(__file__).resolve().parents[1]
VALID = yaml.safe_load((ROOT / "config.yaml").read_text())
COUNTS: collections.Counter = collections.Counter()
CAMPAIGN = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
REQUIRED = [
    ("models",),
    ("tasks",),
    ("experiments",),
    ("seeds",),
    ("tasks", "sst2", "name"),
    ("experiments", "aggressive_sparse", "pattern"),
]


@pytest.fixture(scope="module", autouse=True)
def campaign_summary(request):
    yield
    line = (
        f"config campaign: {COUNTS['tried']} cases tried, "
        f"{COUNTS['rejected']} rejected with one line naming the key or file"
    )
    report_line(request, line)


def leaves(node, path=()):
    """Every (path, value) of a scalar or list in the configuration."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, (*path, str(key)))
    else:
        yield path, node
        if isinstance(node, list):
            for index, item in enumerate(node):
                yield from leaves(item, (*path, str(index)))


def nodes(node, path=()):
    """Every mapping of the configuration with its path."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from nodes(value, (*path, str(key)))


LEAVES = [(path, value) for path, value in leaves(VALID) if value is not None]
NODES = list(nodes(VALID))


def get_parent(config: dict, path: tuple[str, ...]):
    parent = config
    for part in path[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    return parent


def set_value(config: dict, path: tuple[str, ...], value) -> dict:
    config = copy.deepcopy(config)
    parent = get_parent(config, path)
    if isinstance(parent, list):
        parent[int(path[-1])] = value
    else:
        parent[path[-1]] = value
    return config


def wrong_type(value):
    """A value of a JSON type the key cannot take (each key's type follows from its valid value)."""
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, (int, float)):
        return "a lot"
    if isinstance(value, str):
        return {"nested": 1}
    return 3.5  # a list or mapping where a number is not allowed


@st.composite
def mutations(draw):
    """(mutated configuration or YAML text, the key path the error must name)."""
    kind = draw(
        st.sampled_from(
            [
                "wrong_type",
                "out_of_range",
                "non_finite",
                "too_large",
                "unknown_key",
                "missing_key",
                "odd_name",
                "duplicate_key",
                "label_names",
                "bad_yaml",
            ]
        )
    )
    numeric = [(p, v) for p, v in LEAVES if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if kind == "wrong_type":
        path, value = draw(st.sampled_from(LEAVES))
        return set_value(VALID, path, wrong_type(value)), ".".join(path)
    if kind == "out_of_range":
        path, _ = draw(st.sampled_from(numeric))
        return set_value(VALID, path, draw(st.sampled_from([-1, -1e9, -0.5]))), ".".join(path)
    if kind == "non_finite":  # written as .nan, .inf, -.inf
        path, _ = draw(st.sampled_from(numeric))
        value = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
        return set_value(VALID, path, value), ".".join(path)
    if kind == "too_large":  # every number has an upper bound (1.0e+300 passes as an integer to JSON schema)
        path, _ = draw(st.sampled_from(numeric))
        return set_value(VALID, path, draw(st.sampled_from([1e300, 10**30, 1e12]))), ".".join(path)
    if kind == "duplicate_key":  # a `key:` line written twice: the same mapping holds the key twice
        lines = yaml.safe_dump(VALID, sort_keys=False).split("\n")
        keyed = [i for i, line in enumerate(lines) if re.match(r"^\s*[A-Za-z_][\w-]*:", line)]
        index = draw(st.sampled_from(keyed))
        key = lines[index].split(":", 1)[0].strip()
        lines.insert(index + 1, lines[index])
        return "\n".join(lines), ("twice", index + 2, key)
    if kind == "label_names":  # distinct strings the matching rule cannot tell apart
        names = draw(st.sampled_from([["A", "a"], ["yes", "YES "], ["1", "1.0"], ["neg", " neg"], ["-1", "-1.00"]]))
        return set_value(VALID, ("tasks", "sst2", "label_names"), names), "tasks.sst2.label_names"
    if kind == "unknown_key":
        path, _ = draw(st.sampled_from(NODES))
        name = draw(st.from_regex(r"zz_[a-z]{1,8}", fullmatch=True))
        config = copy.deepcopy(VALID)
        node = config
        for part in path:
            node = node[part]
        node[name] = {"pattern": "topk"} if path == ("experiments",) else 1
        if path == ("experiments",):
            node[name] = {"pattern": "topk", "sparsity": 0.5, "colour": "red"}
            return config, ".".join((*path, name, "colour"))
        if path == ("tasks",):
            node[name] = {"name": "synthetic", "colour": "red"}
            return config, ".".join((*path, name, "colour"))
        return config, ".".join((*path, name))
    if kind == "missing_key":
        path = draw(st.sampled_from(REQUIRED))
        config = copy.deepcopy(VALID)
        del get_parent(config, path)[path[-1]]
        return config, ".".join(path)
    if kind == "odd_name":
        name = draw(st.sampled_from(["has space", "a/b", "dots.in.it", "", "ünïcode", "tab\there", "-"]))
        if name == "-":
            return None  # a valid name: nothing to reject
        config = copy.deepcopy(VALID)
        config["experiments"][name] = config["experiments"].pop("light_sparse")
        return config, f"experiments.{name}" if name else "experiments': ''"  # an empty name is shown quoted
    text = yaml.safe_dump(VALID, sort_keys=False)
    damage = draw(
        st.sampled_from(
            [
                "models: [unclosed\n",
                "tasks: {sst2: {name: glue/sst2}\n",
                "\t- tab indented\n",
                "seeds: [0, 1]: 2\n",
                "'unterminated\n",
            ]
        )
    )
    return text + damage, None


@CAMPAIGN
@given(case=mutations())
def test_a_mutated_configuration_is_rejected_in_one_line_naming_the_key(case, tmp_path_factory, capsys):
    if case is None:
        return
    config, key = case
    path = tmp_path_factory.mktemp("config") / "mutated.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, allow_unicode=True))
    COUNTS["tried"] += 1
    code = main(["config", "--config", str(path)])
    captured = capsys.readouterr()
    assert code == 1, f"accepted: {key}"
    message = captured.err.strip()
    assert "\n" not in message and "Traceback" not in message, message
    assert message.startswith("crisp config: error: ")
    if key is None:
        assert "mutated.yaml" in message and "cannot be parsed" in message
    elif isinstance(key, tuple):
        _, line, name = key
        assert "mutated.yaml" in message and f"line {line}," in message and f"key {name!r}" in message, message
    else:
        assert f"config key '{key}" in message, (key, message)
    COUNTS["rejected"] += 1
