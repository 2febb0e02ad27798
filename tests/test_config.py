"""Configuration: defaults from the schema, the experiment matrix, sweeps, overrides, and bad
configurations named by key before any job runs."""

import json
from pathlib import Path

import pytest
import yaml

from crisp.config import ConfigError, load_config, parse_override, sweep_experiment_name

ROOT = Path(__file__).resolve().parents[1]


def test_paper_config_is_valid_and_gets_schema_defaults():
    config = load_config([ROOT / "config.yaml"])
    assert config["models"] == ["distilbert-base-uncased"]
    sst2 = config["tasks"]["sst2"]  # resolved: the GLUE preset, then the schema's defaults
    assert (sst2["name"], sst2["text_column"], sst2["metric"]) == ("glue/sst2", "sentence", "accuracy")
    assert sst2["label_names"] == ["negative", "positive"] and sst2["max_train_examples"] is None
    assert config["max_length"] == 128
    assert config["experiments"]["dense_baseline"] == {
        "pattern": "dense", "sparsity": 0.0, "options": {}, "apply": "train_and_eval", "attention_dropout": None
    }  # fmt: skip
    assert config["experiments"]["aggressive_sparse"]["sparsity"] == 0.8
    assert len(config["seeds"]) >= 6  # the exact sign-flip test can reach p < 0.05 only from 6 seeds
    # from the schema, not from config.yaml
    assert config["training"]["max_grad_norm"] == 1.0
    assert config["training"]["group_by_length"] is True
    assert config["statistics"] == {
        "bootstrap_resamples": 2000,
        "bootstrap_seed": 0,
        "confidence": 0.95,
        "power": 0.8,
        "target_difference": 1.0,
    }


def test_paper_config_has_the_controls_beside_the_papers_four():
    experiments = load_config([ROOT / "config.yaml"])["experiments"]
    assert {"dense_baseline", "light_sparse", "moderate_sparse", "aggressive_sparse"} <= set(experiments)
    assert experiments["random_sparse"]["pattern"] == "random"
    assert experiments["random_sparse"]["sparsity"] == experiments["aggressive_sparse"]["sparsity"]
    assert (
        experiments["dropout_control"]["pattern"] == "dense"
        and experiments["dropout_control"]["attention_dropout"] > 0.1
    )
    assert experiments["train_only_sparse"]["apply"] == "train"
    # attention dropout acts only in training: a random training-only arm is its fair comparison
    assert experiments["train_only_random"] == {**experiments["random_sparse"], "apply": "train"}


def test_demo_overrides_only_what_it_must():
    demo = load_config([ROOT / "config.yaml", ROOT / "config/demo.yaml"])
    assert demo["models"] == ["bundled:minilm"]
    assert list(demo["tasks"]) == ["sentiment"] and demo["tasks"]["sentiment"]["name"] == "synthetic"
    # the random and dropout controls stay in the demo
    assert {"dense_baseline", "aggressive_sparse", "random_sparse", "dropout_control"} == set(demo["experiments"])
    assert demo["seeds"] == [0, 1]


def test_glue_config_is_the_matrix_of_four_tasks_and_three_encoders():
    glue = load_config([ROOT / "config.yaml", ROOT / "config/glue.yaml"])
    assert set(glue["tasks"]) == {"sst2", "cola", "mrpc", "rte"}
    assert len(glue["models"]) == 3
    jobs = len(glue["tasks"]) * len(glue["models"]) * len(glue["experiments"]) * len(glue["seeds"])
    assert f"= {jobs} fine-tuning jobs" in (ROOT / "config/glue.yaml").read_text()


def test_neighbours_config_layers_structured_and_adaptive_patterns_and_a_sweep():
    config = load_config([ROOT / "config.yaml", ROOT / "config/neighbours.yaml"])
    patterns = {spec["pattern"] for spec in config["experiments"].values()}
    assert {"window", "block_topk", "sparsemax", "entmax15"} <= patterns
    assert config["experiments"]["sparsemax"]["sparsity"] is None  # measured, not set
    assert config["experiments"]["topk_sweep_95"]["sparsity"] == 0.95


def test_a_preset_wins_over_the_schema_defaults_and_a_users_key_over_the_preset():
    overrides = ["tasks.cola={name: glue/cola}", "tasks.mrpc={name: glue/mrpc, metric: mcc}"]
    config = load_config([ROOT / "config.yaml"], overrides)
    assert config["tasks"]["cola"]["metric"] == "mcc"  # the preset, not the schema's default accuracy
    assert config["tasks"]["mrpc"]["metric"] == "mcc" and config["tasks"]["mrpc"]["text_pair_column"] == "sentence2"
    assert config["tasks"]["cola"]["synthetic"]["label_noise"] == 0.05  # a schema default


def test_a_sweep_expands_into_named_experiments():
    config = load_config([ROOT / "config.yaml"], ["sweeps={s: {pattern: topk, sparsities: [0.6, 0.9], options: {}}}"])
    assert config["experiments"]["s_60"] == {
        "pattern": "topk", "sparsity": 0.6, "options": {}, "apply": "train_and_eval", "attention_dropout": None,
        "sweep": "s",
    }  # fmt: skip
    assert config["experiments"]["s_90"]["sparsity"] == 0.9
    assert sweep_experiment_name("x", 0.125) == "x_12p5"
    # validating a validated configuration again changes nothing
    from crisp.config import validate_config

    assert validate_config(json.loads(json.dumps(config))) == config


def test_a_sweep_may_not_shadow_an_experiment():
    with pytest.raises(ConfigError, match="'sweeps.aggressive'"):
        load_config(
            [ROOT / "config.yaml"],
            ["sweeps={aggressive: {pattern: topk, sparsities: [0.8]}}", "experiments.aggressive_80={pattern: dense}"],
        )


def test_overrides_are_parsed_as_yaml_values():
    assert parse_override("training.learning_rate=3e-5") == {"training": {"learning_rate": 3e-5}}
    assert parse_override("seeds=[1, 2]") == {"seeds": [1, 2]}
    assert parse_override("models=[bundled:minilm]") == {"models": ["bundled:minilm"]}
    config = load_config([ROOT / "config.yaml"], ["experiments.light_sparse.sparsity=0.4", "training.epochs=1"])
    assert config["experiments"]["light_sparse"]["sparsity"] == 0.4
    assert config["training"]["epochs"] == 1
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("no-equals-sign")


BAD_CONFIGS = [
    ("experiments.aggressive_sparse.sparsity=1.0", "experiments.aggressive_sparse.sparsity"),
    ("experiments.light_sparse.sparsity=-0.1", "experiments.light_sparse.sparsity"),
    ("experiments.light_sparse.pattern=diagonal", "experiments.light_sparse.pattern"),
    ("experiments.light_sparse.apply=eval", "experiments.light_sparse.apply"),
    ("experiments.dropout_control.attention_dropout=1.5", "experiments.dropout_control.attention_dropout"),
    ("training.learning_rate=-1e-5", "training.learning_rate"),
    ("training.learning_rat=1e-5", "training.learning_rat"),
    ("colour=blue", "colour"),
    ("experiments.light_sparse.sparsty=0.3", "experiments.light_sparse.sparsty"),
    ("seeds=[]", "seeds"),
    ("baseline=nonexistent", "baseline"),
    ("models=[]", "models"),
    ("models=[tiny:gpt3]", "models.0"),
    ("models=[bundled:bert]", "models.0"),
    ("models=[./no/such/folder]", "models.0"),
    ("tasks.sst2.name=local", "tasks.sst2.train_file"),
    ("tasks.sst2.metric=auc", "tasks.sst2.metric"),
    ("tasks.sst2.synthetic.label_noise=0.7", "tasks.sst2.synthetic.label_noise"),
    ("tasks.sst2.colour=blue", "tasks.sst2.colour"),
    ("tasks={bad name: {name: synthetic}}", "tasks.bad name"),
    ("statistics.confidence=1.5", "statistics.confidence"),
    ("sweeps.s={pattern: topk}", "sweeps.s.sparsities"),
]


@pytest.mark.parametrize("override, key", BAD_CONFIGS)
def test_bad_config_is_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError) as error:
        load_config([ROOT / "config.yaml"], [override])
    assert f"'{key}'" in str(error.value)


def test_an_unknown_glue_task_is_named():
    with pytest.raises(ConfigError, match="sst2") as error:
        load_config([ROOT / "config.yaml"], ["tasks.sst2.name=glue/sst3"])
    assert "tasks.sst2" in str(error.value)


def test_missing_tasks_are_named(tmp_path):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    del config["tasks"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="'tasks'"):
        load_config([path])


def test_unreadable_config_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([tmp_path / "missing.yaml"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config([broken])


def test_schema_defaults_fill_a_partial_section():
    from crisp.config import schema_defaults

    training = schema_defaults("training")
    assert training["max_grad_norm"] == 1.0 and training["report_to"] == "none"
    assert schema_defaults("statistics")["bootstrap_resamples"] == 2000


def test_resolved_json_round_trips_small_floats(tmp_path):
    config = load_config([ROOT / "config.yaml"])
    path = tmp_path / "resolved.json"
    path.write_text(json.dumps(config))  # 1e-05 in JSON: PyYAML alone would read it as text
    assert load_config([path]) == config


def test_exponent_without_decimal_point_gets_a_hint(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text((ROOT / "config.yaml").read_text().replace("learning_rate: 1.0e-5", "learning_rate: 2e-5"))
    with pytest.raises(ConfigError, match=r"'training.learning_rate'.*write it as 2.0e-05"):
        load_config([path])


def test_a_later_file_can_drop_an_experiment_or_a_task(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text(
        "experiments:\n  light_sparse: null\n  window_sparse: {pattern: window, sparsity: 0.8}\n"
        "tasks:\n  sst2: null\n  toy: {name: synthetic}\n"
    )
    config = load_config([ROOT / "config.yaml", mine])
    assert "light_sparse" not in config["experiments"] and "window_sparse" in config["experiments"]
    assert list(config["tasks"]) == ["toy"]


@pytest.mark.parametrize(
    "override, key",
    [
        ("experiments.dense_baseline.sparsity=0.5", "experiments.dense_baseline.sparsity"),
        ("experiments.light_sparse.options={window: 3}", "experiments.light_sparse.options"),
        ("experiments.random_sparse.options={seed: -1}", "experiments.random_sparse.options"),
    ],
)
def test_experiments_are_checked_as_sparsify_would(override, key):
    with pytest.raises(ConfigError, match=f"'{key}"):
        load_config([ROOT / "config.yaml"], [override])


def test_a_model_folder_with_braces_is_rejected_naming_the_key(tmp_path):
    # Its files are inputs of the train jobs, and Snakemake reads braces in an input as wildcards.
    folder = tmp_path / "model {x}"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"\{ or \}") as error:
        load_config([ROOT / "config.yaml"], [f"models=['{folder}']"])
    assert "'models.0'" in str(error.value)
