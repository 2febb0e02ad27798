"""Configuration: defaults from the schema, overrides, and bad configurations named by key."""

from pathlib import Path

import pytest
import yaml

from crisp.config import ConfigError, load_config, parse_override

ROOT = Path(__file__).resolve().parents[1]


def test_paper_config_is_valid_and_gets_schema_defaults():
    config = load_config([ROOT / "config.yaml"])
    assert config["model"] == "distilbert-base-uncased"
    assert config["dataset"]["name"] == "glue/sst2"
    assert config["max_length"] == 128
    assert config["experiments"]["dense_baseline"] == {"pattern": "dense", "sparsity": 0.0, "options": {}}
    assert config["experiments"]["aggressive_sparse"]["sparsity"] == 0.8
    assert len(config["seeds"]) >= 3
    # from the schema, not from config.yaml
    assert config["training"]["max_grad_norm"] == 1.0
    assert config["dataset"]["max_train_examples"] is None


def test_demo_overrides_only_what_it_must():
    paper = load_config([ROOT / "config.yaml"])
    demo = load_config([ROOT / "config.yaml", ROOT / "config/demo.yaml"])
    assert demo["model"] == "bundled:minilm"
    assert demo["dataset"]["name"] == "synthetic"
    assert demo["experiments"] == paper["experiments"]
    assert demo["seeds"] == [0, 1]


def test_overrides_are_parsed_as_yaml_values():
    assert parse_override("training.learning_rate=3e-5") == {"training": {"learning_rate": 3e-5}}
    assert parse_override("seeds=[1, 2]") == {"seeds": [1, 2]}
    assert parse_override("model=bundled:minilm") == {"model": "bundled:minilm"}
    config = load_config([ROOT / "config.yaml"], ["experiments.light_sparse.sparsity=0.4", "training.epochs=1"])
    assert config["experiments"]["light_sparse"]["sparsity"] == 0.4
    assert config["training"]["epochs"] == 1
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("no-equals-sign")


BAD_CONFIGS = [
    ("experiments.aggressive_sparse.sparsity=1.0", "experiments.aggressive_sparse.sparsity"),
    ("experiments.light_sparse.sparsity=-0.1", "experiments.light_sparse.sparsity"),
    ("experiments.light_sparse.pattern=diagonal", "experiments.light_sparse.pattern"),
    ("training.learning_rate=-1e-5", "training.learning_rate"),
    ("training.learning_rat=1e-5", "training.learning_rat"),
    ("colour=blue", "colour"),
    ("experiments.light_sparse.sparsty=0.3", "experiments.light_sparse.sparsty"),
    ("seeds=[]", "seeds"),
    ("baseline=nonexistent", "baseline"),
    ("dataset.name=local", "dataset.train_file"),
]


@pytest.mark.parametrize("override, key", BAD_CONFIGS)
def test_bad_config_is_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError) as error:
        load_config([ROOT / "config.yaml"], [override])
    assert f"'{key}'" in str(error.value)


def test_missing_dataset_is_named(tmp_path):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    del config["dataset"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="'dataset'"):
        load_config([path])


def test_unreadable_config_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([tmp_path / "missing.yaml"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config([broken])


def test_schema_defaults_fill_a_partial_section():
    from crisp.config import schema_defaults

    dataset = schema_defaults("dataset")
    assert dataset["text_column"] == "sentence" and dataset["max_train_examples"] is None
    assert dataset["synthetic"]["label_noise"] == 0.05
    assert "name" not in dataset  # required keys have no default


def test_resolved_json_round_trips_small_floats(tmp_path):
    import json

    config = load_config([ROOT / "config.yaml"])
    path = tmp_path / "resolved.json"
    path.write_text(json.dumps(config))  # 1e-05 in JSON: PyYAML alone would read it as text
    assert load_config([path]) == config


def test_exponent_without_decimal_point_gets_a_hint(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text((ROOT / "config.yaml").read_text().replace("learning_rate: 1.0e-5", "learning_rate: 2e-5"))
    with pytest.raises(ConfigError, match=r"'training.learning_rate'.*write it as 2.0e-05"):
        load_config([path])


def test_a_later_file_can_drop_an_experiment(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("experiments:\n  light_sparse: null\n  random_sparse: {pattern: random, sparsity: 0.8}\n")
    config = load_config([ROOT / "config.yaml", mine])
    assert list(config["experiments"]) == ["dense_baseline", "moderate_sparse", "aggressive_sparse", "random_sparse"]


@pytest.mark.parametrize(
    "override, key",
    [
        ("experiments.dense_baseline.sparsity=0.5", "experiments.dense_baseline.sparsity"),
        ("experiments.light_sparse.options={window: 3}", "experiments.light_sparse.options"),
    ],
)
def test_experiments_are_checked_as_sparsify_would(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config([ROOT / "config.yaml"], [override])
