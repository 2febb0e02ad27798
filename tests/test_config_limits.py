"""What a configuration may hold: finite numbers within the schema's bounds, each key once, limited
depth and size, and a results folder Snakemake can use; each problem one line naming the key (or the
file and line), found in bounded time and memory."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from crisp.config import ConfigError, load_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "config.yaml"


def rejected(*overrides: str, files=()) -> str:
    with pytest.raises(ConfigError) as error:
        load_config([PAPER, *files], list(overrides))
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "key, value",
    [
        ("training.learning_rate", ".nan"),
        ("training.learning_rate", ".inf"),
        ("training.weight_decay", ".nan"),
        ("training.epochs", ".inf"),
        ("training.epochs", ".nan"),
        ("training.max_grad_norm", ".nan"),
        ("statistics.confidence", ".nan"),
        ("statistics.power", "-.inf"),
        ("experiments.light_sparse.sparsity", ".nan"),
        ("experiments.dropout_control.attention_dropout", ".nan"),
        ("tasks.sst2.synthetic.label_noise", ".nan"),
        ("experiments.light_sparse.options.seed", ".inf"),
    ],
)
def test_a_non_finite_number_is_rejected_naming_the_key(key, value):
    message = rejected(f"{key}={value}")
    assert f"config key '{key}'" in message and "finite" in message


def test_a_non_finite_number_in_a_json_file_is_rejected(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text('{"training": {"learning_rate": NaN}}')
    message = rejected(files=[path])
    assert "mine.json" in message and "'training.learning_rate'" in message


@pytest.mark.parametrize(
    "key, value",
    [
        ("training.learning_rate", "1.0e+300"),
        ("training.weight_decay", "2.0"),
        ("training.epochs", "1.0e+9"),
        ("training.batch_size", "1.0e+12"),
        ("training.gradient_accumulation_steps", "100000"),
        ("profiling.measure_seq_len", "100000000"),
        ("profiling.sequence_lengths", "[64, 1000000000]"),
        ("statistics.bootstrap_resamples", "1.0e+12"),
        ("statistics.bootstrap_seed", "1.0e+20"),
        ("seeds", "[0, 1.0e+20]"),
        ("tasks.sst2.synthetic.train_size", "1.0e+12"),
        ("max_length", "100000"),
    ],
)
def test_a_number_past_its_bound_is_rejected_naming_the_key(key, value):
    assert f"config key '{key}" in rejected(f"{key}={value}")


def test_every_number_in_the_schema_is_bounded_above():
    import yaml

    def numbers(node, path=()):
        if isinstance(node, dict):
            if node.get("type") in ("number", "integer") or (
                isinstance(node.get("type"), list) and {"number", "integer"} & set(node["type"])
            ):
                yield path, node
            for key, value in node.items():
                yield from numbers(value, (*path, str(key)))

    schema = yaml.safe_load((ROOT / "crisp/schemas/config.schema.yaml").read_text())
    unbounded = [".".join(path) for path, node in numbers(schema) if not {"maximum", "exclusiveMaximum"} & set(node)]
    assert unbounded == []


@pytest.mark.parametrize(
    "text, line, key",
    [
        ("training:\n  device: cpu\n  epochs: 1\ntraining:\n  epochs: 3\n", 4, "training"),
        ("training:\n  epochs: 1\n  device: cpu\n  epochs: 3\n", 4, "epochs"),
        ("seeds: [0]\nexperiments:\n  a: {pattern: topk, sparsity: 0.5, sparsity: 0.9}\n", 3, "sparsity"),
    ],
)
def test_a_key_given_twice_in_a_file_is_rejected_naming_file_line_and_key(tmp_path, text, line, key):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    message = rejected(files=[path])
    assert "twice.yaml" in message and f"line {line}" in message and f"'{key}'" in message


def test_a_key_given_twice_in_a_json_file_is_rejected(tmp_path):
    path = tmp_path / "twice.json"
    path.write_text('{"seeds": [0], "seeds": [1]}')
    message = rejected(files=[path])
    assert "twice.json" in message and "'seeds'" in message


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text(
        "sweeps:\n  a: &sweep {pattern: topk, sparsities: [0.5]}\n  b:\n    <<: *sweep\n    sparsities: [0.7]\n"
    )
    config = load_config([PAPER, path])
    assert config["experiments"]["b_70"]["sparsity"] == 0.7


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_value_nested_a_thousand_deep_is_one_line(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    if suffix == ".json":
        path.write_text('{"training": ' + '{"a": ' * 1000 + "1" + "}" * 1001)
    else:
        path.write_text("training: " + "{a: " * 1000 + "1" + "}" * 1000 + "\n")
    message = rejected(files=[path])
    assert path.name in message and "nested deeper than" in message


def test_a_deep_value_built_in_code_is_named_by_its_key():
    config = load_config([PAPER])
    deep = node = {}
    for _ in range(1000):
        node["a"] = {}
        node = node["a"]
    config["experiments"]["light_sparse"]["options"] = deep
    with pytest.raises(ConfigError, match="'experiments.light_sparse.options.a.*nested deeper"):
        validate_config(config)


def test_a_ten_megabyte_value_is_rejected_quickly_in_bounded_memory(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text('results: "' + "r" * 10_000_000 + '"\n')

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))

    result = subprocess.run(
        [sys.executable, "-m", "crisp", "config", "--config", str(PAPER), "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit_memory,
    )
    assert result.returncode == 1
    message = result.stderr.strip()
    assert "\n" not in message and "config key 'results'" in message and len(message) < 300, message[-2000:]


@pytest.mark.parametrize("results", ["res/{x}", "{results}", "res}", "-results"])
def test_a_results_folder_snakemake_cannot_use_is_rejected(results):
    message = rejected(f"results={json.dumps(results)}")
    assert "config key 'results'" in message and "{ or }" in message


def test_a_results_folder_with_shell_characters_is_accepted():
    results = "res dir $(touch pwned) `x`; it's \"q\""
    assert load_config([PAPER], [f"results={json.dumps(results)}"])["results"] == results


@pytest.mark.parametrize(
    "names, shown",
    [('[A, a, b]', "'A' and 'a'"), ('[" yes", "yes "]', "' yes' and 'yes '"), ('["1", "1.0"]', "'1' and '1.0'")],
)
def test_label_names_must_be_told_apart_by_the_matching_rule(names, shown):
    message = rejected(f"tasks.sst2.label_names={names}")
    assert "config key 'tasks.sst2.label_names'" in message and shown in message


def test_label_names_that_look_like_numbers_are_allowed():
    config = load_config([PAPER], ['tasks.sst2.label_names=["1", "2", "3"]', "tasks.sst2.metric=accuracy"])
    assert config["tasks"]["sst2"]["label_names"] == ["1", "2", "3"]


def test_a_local_data_file_with_braces_is_rejected_naming_the_key():
    task = "tasks.sst2={name: local, train_file: 'data/{x}.tsv', validation_file: data/dev.tsv}"
    message = rejected(task)
    assert "config key 'tasks.sst2.train_file'" in message and "{ or }" in message


def test_aliases_that_expand_to_a_billion_values_are_rejected_quickly(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert "more than 1,000,000 values" in rejected(files=[path])
