"""Data sources, the checks on bad data, and the tokenisation cache."""

import csv
import json
import os
import re
import subprocess
import sys
import textwrap

import datasets
import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from crisp import data, synthetic
from crisp.data import (
    DataError,
    load_prepared,
    load_raw_dataset,
    prepare,
    read_stats,
)
from crisp.errors import ConfigError
from crisp.modeling import HubUnreachableError, load_tokenizer
from crisp.synthetic import generate_synthetic, generate_synthetic_pairs
from crisp.tasks import GLUE_PRESETS, resolve_task

TOKENIZER = "tiny:bert"  # the bundled MiniLM vocabulary, loaded from disk

# A few lines as GLUE ships SST-2: a header, tab-separated, trailing spaces, unbalanced quotes.
SST2_TRAIN = (
    "sentence\tlabel\n"
    "hide new secretions from the parental units \t0\n"
    "contains no wit , only labored gags \t0\n"
    "that loves its characters and communicates something rather beautiful about human nature \t1\n"
    "the greatest musicians \t1\n"
    "it 's a \" charming and often affecting journey . \t1\n"
    "null \t0\n"
)
SST2_DEV = (
    "sentence\tlabel\n"
    "it 's a charming and often affecting journey . \t1\n"
    "unflinchingly bleak and desperate \t0\n"
)


def local_config(train_file, validation_file, **overrides):
    return {"name": "local", "train_file": str(train_file), "validation_file": str(validation_file), **overrides}


def write_table(frame: pd.DataFrame, path):
    if path.suffix == ".tsv":  # plain TSV as GLUE writes it: no quoting
        frame.to_csv(path, sep="\t", index=False, quoting=csv.QUOTE_NONE)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    return path


@pytest.fixture
def sst2_files(tmp_path):
    (tmp_path / "train.tsv").write_text(SST2_TRAIN)
    (tmp_path / "dev.tsv").write_text(SST2_DEV)
    return tmp_path / "train.tsv", tmp_path / "dev.tsv"


# --- Synthetic data ------------------------------------------------------------------------

def test_synthetic_data_is_fixed_by_the_seed():
    first = generate_synthetic(300, seed=0, label_noise=0.05)
    assert first.equals(generate_synthetic(300, seed=0, label_noise=0.05))
    assert not first["text"].equals(generate_synthetic(300, seed=1, label_noise=0.05)["text"])
    assert not first["text"].equals(generate_synthetic(300, seed=0, label_noise=0.05, split="validation")["text"])


def test_synthetic_data_has_both_classes_and_the_hard_constructions():
    frame = generate_synthetic(2000, seed=0)
    assert 0.4 < frame["label"].mean() < 0.6
    text = " ".join(frame["text"])
    assert text.count(" not ") + text.count("n't ") > 200
    assert text.count(", but ") > 200
    assert sum(text.count(f" {word} ") for word in synthetic.INTENSIFIERS) > 200


def test_synthetic_negation_and_contrast_decide_the_label():
    frame = generate_synthetic(3000, seed=0, label_noise=0.0)
    adjective = r"(?:(?:" + "|".join(synthetic.INTENSIFIERS) + r") )?(\w+)"
    negated = re.compile(r"^[\w ]+ (?:is|was|are|were) not " + adjective + r"(?: [.!])?$")
    contrast = re.compile(r", but [\w ]+ (?:is|was|are|were) " + adjective + r"(?: [.!])?$")
    positive = set(synthetic.POSITIVE_WORDS)
    checked = {"negation": 0, "contrast": 0}
    for text, label in zip(frame["text"], frame["label"]):
        if "," not in text and (match := negated.match(text)):
            assert label == (match.group(1) not in positive), text  # "not good" is negative
            checked["negation"] += 1
        elif match := contrast.search(text):
            assert label == (match.group(1) in positive), text  # the clause after "but" decides
            checked["contrast"] += 1
    assert min(checked.values()) > 20


def test_synthetic_label_noise_flips_labels_at_about_the_configured_rate():
    clean = generate_synthetic(4000, seed=3, label_noise=0.0)
    noisy = generate_synthetic(4000, seed=3, label_noise=0.1)
    assert clean["text"].equals(noisy["text"])
    assert 0.08 < (clean["label"] != noisy["label"]).mean() < 0.12
    with pytest.raises(ConfigError, match="label_noise"):
        generate_synthetic(10, seed=0, label_noise=0.7)


def test_label_noise_of_one_half_gives_coin_flip_labels():
    # The schema allows 0.5: the labels then carry no information about the text.
    clean = generate_synthetic(4000, seed=3, label_noise=0.0)
    coin_flips = generate_synthetic(4000, seed=3, label_noise=0.5)
    assert 0.46 < (clean["label"] == coin_flips["label"]).mean() < 0.54
    raw = load_raw_dataset({"name": "synthetic", "synthetic": {"train_size": 50, "validation_size": 10,
                                                               "label_noise": 0.5}})
    assert raw["train"].num_rows == 50


def bag_of_words_accuracy(train: pd.DataFrame, held_out: pd.DataFrame, columns: list[str]) -> float:
    """Held-out accuracy of logistic regression on word counts (each column's words kept apart)."""
    def words(frame):
        return [" ".join(f"{column}:{word}" for column in columns for word in row[column].split())
                for _, row in frame.iterrows()]

    model = make_pipeline(CountVectorizer(token_pattern=r"\S+", lowercase=False), LogisticRegression(max_iter=2000))
    model.fit(words(train), train["label"])
    return float((model.predict(words(held_out)) == held_out["label"]).mean())


def test_a_bag_of_words_cannot_solve_synthetic_data():
    # Words alone carry some signal, but negation and "X, but Y" need word order.
    train, held_out = generate_synthetic(3000, seed=0), generate_synthetic(1000, seed=0, split="validation")
    assert 0.55 < bag_of_words_accuracy(train, held_out, ["text"]) < 0.9


def test_synthetic_source_gives_the_configured_sizes():
    raw = load_raw_dataset({"name": "synthetic", "seed": 4,
                            "synthetic": {"train_size": 120, "validation_size": 30, "label_noise": 0.0}})
    assert (raw["train"].num_rows, raw["validation"].num_rows) == (120, 30)
    assert raw["train"].features["label"].names == ["negative", "positive"]
    assert raw["train"].column_names == ["text", "label"]


# --- Local files ---------------------------------------------------------------------------

def test_glue_sst2_tsv_files_load_as_they_are(sst2_files):
    raw = load_raw_dataset(local_config(*sst2_files))
    assert raw["train"].num_rows == 6 and raw["validation"].num_rows == 2
    assert raw["train"]["label"] == [0, 0, 1, 1, 1, 0]
    assert raw["train"]["text"][4] == "it 's a \" charming and often affecting journey . "
    assert raw["train"]["text"][5] == "null "  # a sentence, not a missing value


@pytest.mark.parametrize("extension", [".tsv", ".csv", ".jsonl", ".parquet"])
def test_every_file_format_loads_the_same_data(tmp_path, extension):
    train = pd.DataFrame({"id": [1, 2, 3, 4], "review": ["great fun", "a bore", 'a "quoted", comma', "fine"],
                          "stars": [1, 0, 0, 1]})
    validation = pd.DataFrame({"id": [5, 6], "review": ["lovely", "awful"], "stars": [1, 0]})
    config = local_config(write_table(train, tmp_path / f"train{extension}"),
                          write_table(validation, tmp_path / f"validation{extension}"),
                          text_column="review", label_column="stars")
    raw = load_raw_dataset(config)
    assert list(raw["train"]["text"]) == train["review"].tolist()
    assert raw["train"]["label"] == [1, 0, 0, 1]
    assert raw["validation"]["label"] == [1, 0]


def test_labels_may_be_given_by_name_or_as_whole_numbers(tmp_path):
    train = pd.DataFrame({"sentence": ["a", "b", "c"], "label": ["positive", "Negative", "1.0"]})
    validation = pd.DataFrame({"sentence": ["d"], "label": [" 0 "]})
    raw = load_raw_dataset(local_config(write_table(train, tmp_path / "t.csv"),
                                        write_table(validation, tmp_path / "v.csv")))
    assert raw["train"]["label"] == [1, 0, 1] and raw["validation"]["label"] == [0]


def test_caps_take_a_seeded_sample_in_file_order():
    config = {"name": "synthetic", "seed": 0, "max_train_examples": 50, "max_validation_examples": 500,
              "synthetic": {"train_size": 400, "validation_size": 100, "label_noise": 0.0}}
    full = generate_synthetic(400, seed=0)["text"].tolist()
    sampled = load_raw_dataset(config)
    assert sampled["train"].num_rows == 50 and sampled["validation"].num_rows == 100  # cap above size
    positions = [full.index(text) for text in sampled["train"]["text"]]
    assert positions == sorted(positions)
    assert sampled["train"]["text"] == load_raw_dataset(config)["train"]["text"]
    assert sampled["train"]["text"] != load_raw_dataset({**config, "seed": 1})["train"]["text"]


# --- Bad data --------------------------------------------------------------------------------

def bad_train(tmp_path, name, content):
    """Write a bad training file next to a good validation file; return the config."""
    (tmp_path / name).write_text(content)
    (tmp_path / "dev.tsv").write_text(SST2_DEV)
    return local_config(tmp_path / name, tmp_path / "dev.tsv")


@pytest.mark.parametrize("name, content, expected", [
    ("train.tsv", "text\tlabel\ngood\t1\nbad\t0\n",
     ["no column 'sentence'", "text_column", "Columns found: text, label"]),
    ("train.tsv", "sentence\tlabel\ngood\t1\nbad\t0\n \t1\n",
     ["data row 3 (line 4 of the file", "empty or missing text", "1 such rows"]),
    ("train.tsv", "sentence\tlabel\ngood\t1\nbad\t0\nodd\t2\nworse\tneg\n",
     ["data row 3 (line 4 of the file", "label '2'", "allowed labels 0 (negative), 1 (positive)", "2 such rows"]),
    ("train.tsv", "sentence\tlabel\ngood\t1\nbad\t\n",
     ["data row 2 (line 3 of the file", "label ''"]),
    ("train.csv", "sentence,label\ngood,1\nbad,0.5\n", ["data row 2 (line 3", "label '0.5'"]),
    ("train.jsonl", '{"sentence": "good", "label": 1}\n\n{"sentence": "bad", "label": 7}\n',
     ["line 3", "label 7"]),
    ("train.jsonl", '{"sentence": "good", "label": 1}\n{"sentence": "bad", "label": 0\n',
     ["line 2 is not valid JSON"]),
    ("train.jsonl", '{"sentence": "good", "label": 1}\n{"label": 0}\n', ["line 2", "empty or missing text"]),
    ("train.tsv", "sentence\tlabel\ngood\t1\nfine\t1\n", ["same label, 1 (positive)", "two classes"]),
    ("train.tsv", "sentence\tlabel\ngood\t1\tx\tz\n", ["line 2 has 4 fields but the header has 2", "tab inside"]),
    ("train.csv", 'sentence,label\ngood,1\n"bad"x,0\n', ["line 3 could not be read as csv"]),
    ("train.tsv", "sentence\tlabel\n", ["has no data rows"]),
    ("train.tsv", "", ["is empty"]),
    ("train.tsv", "sentence\tsentence\tlabel\na\tb\t1\n", ["'sentence' more than once"]),
    ("train.txt", "good 1\n", ["extension '.txt'", ".tsv, .csv, .jsonl, .parquet"]),
])
def test_bad_data_is_reported_with_file_and_row(tmp_path, name, content, expected):
    config = bad_train(tmp_path, name, content)
    with pytest.raises(DataError) as raised:
        load_raw_dataset(config)
    message = str(raised.value)
    assert str(tmp_path / name) in message
    for part in expected:
        assert part in message


def test_a_missing_file_or_setting_is_reported(tmp_path, sst2_files):
    with pytest.raises(DataError, match="does not exist"):
        load_raw_dataset(local_config(tmp_path / "nope.tsv", sst2_files[1]))
    with pytest.raises(ConfigError, match="'task.validation_file': required when task.name is 'local'"):
        load_raw_dataset({"name": "local", "train_file": str(sst2_files[0])})


def test_validation_labels_must_occur_in_training(tmp_path):
    (tmp_path / "train.csv").write_text("sentence,label\ngood,2\nbad,0\n")
    (tmp_path / "dev.csv").write_text("sentence,label\nfine,0\nokay,1\n")
    config = local_config(tmp_path / "train.csv", tmp_path / "dev.csv", label_names=["neg", "neutral", "pos"])
    with pytest.raises(DataError, match=r"dev.csv: data row 2 has label 1, which never occurs"):
        load_raw_dataset(config)


def test_a_cap_that_leaves_one_class_is_reported(sst2_files):
    with pytest.raises(DataError, match="after sampling max_train_examples = 1 rows"):
        load_raw_dataset(local_config(*sst2_files, max_train_examples=1))


def test_sst2_sized_files_load(tmp_path):
    rows = 67_349
    frame = pd.DataFrame({"sentence": ["a perfectly ordinary sentence "] * rows, "label": np.arange(rows) % 2})
    write_table(frame, tmp_path / "train.tsv")
    write_table(frame.head(872), tmp_path / "dev.tsv")
    raw = load_raw_dataset(local_config(tmp_path / "train.tsv", tmp_path / "dev.tsv"))
    assert raw["train"].num_rows == rows and raw["validation"].num_rows == 872


# --- Hub data sets -------------------------------------------------------------------------

def test_an_uncached_hub_dataset_fails_fast_with_offline_advice(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for variable in data.DATASET_OFFLINE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(HubUnreachableError) as raised:
        load_raw_dataset({"name": "crisp-tests/not-a-dataset"})
    message = str(raised.value)
    assert "Data set 'crisp-tests/not-a-dataset'" in message and "cannot be reached" in message
    assert "name: local" in message and "name: synthetic" in message and "config/demo.yaml" in message


def test_datasets_offline_switch_is_respected(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(HubUnreachableError, match="HF_DATASETS_OFFLINE=1"):
        load_raw_dataset({"name": "glue/sst2"})


def fake_hub(monkeypatch, columns: dict, label_names: list[str], splits: dict[str, int]) -> list:
    """Replace datasets.load_dataset by a stand-in; return the list its (path, config) calls go to."""
    features = datasets.Features({**{column: datasets.Value("string") for column in columns},
                                  "label": datasets.ClassLabel(names=label_names)})
    calls = []

    def fake_load_dataset(path, name):
        calls.append((path, name))

        def split(n):
            return datasets.Dataset.from_dict(
                {**{column: [f"{prefix}{i}" for i in range(n)] for column, prefix in columns.items()},
                 "label": [i % len(label_names) for i in range(n)]}, features=features)

        return datasets.DatasetDict({name: split(n) for name, n in splits.items()})

    monkeypatch.setattr(data.datasets, "load_dataset", fake_load_dataset)
    return calls


def test_hub_datasets_use_their_train_and_validation_splits(monkeypatch):
    calls = fake_hub(monkeypatch, {"sentence": "s"}, ["negative", "positive"],
                     {"train": 10, "validation": 4, "test": 3})
    raw = load_raw_dataset({"name": "glue/sst2"})
    assert calls == [("nyu-mll/glue", "sst2")]  # GLUE's current Hub repository, one configuration per task
    assert set(raw) == {"train", "validation"}  # never the unlabelled test split
    assert raw["validation"]["text"] == ["s0", "s1", "s2", "s3"]
    assert raw["train"].features["label"].names == ["negative", "positive"]


@pytest.mark.parametrize("name, expected", [
    ("glue/sst2", ("nyu-mll/glue", "sst2")),
    ("super_glue/boolq", ("super_glue", "boolq")),
    ("stanfordnlp/sst2", ("stanfordnlp/sst2", None)),
    ("nyu-mll/glue/mrpc", ("nyu-mll/glue", "mrpc")),
    ("imdb", ("imdb", None)),
])
def test_hub_names_split_into_path_and_config(monkeypatch, name, expected):
    calls = fake_hub(monkeypatch, {"sentence": "s"}, ["negative", "positive"], {"train": 4, "validation": 2})
    load_raw_dataset({"name": name})
    assert calls == [expected]


def test_mnli_loads_three_labels_pairs_and_the_matched_validation_split(monkeypatch):
    fake_hub(monkeypatch, {"premise": "p", "hypothesis": "h"}, ["entailment", "neutral", "contradiction"],
             {"train": 9, "validation_matched": 6, "validation_mismatched": 5, "test_matched": 2})
    raw = load_raw_dataset({"name": "glue/mnli"})
    assert raw["validation"].num_rows == 6 and raw["validation"]["text_pair"][:2] == ["h0", "h1"]
    assert raw["train"].column_names == ["text", "text_pair", "label"]
    assert raw["train"].features["label"].names == ["entailment", "neutral", "contradiction"]
    assert sorted(set(raw["train"]["label"])) == [0, 1, 2]


def test_label_names_come_from_the_hub_features_unless_given(monkeypatch):
    fake_hub(monkeypatch, {"premise": "p", "claim": "c"}, ["yes", "no", "maybe"], {"train": 6, "validation": 3})
    task = {"name": "someone/nli", "text_column": "premise", "text_pair_column": "claim"}
    assert load_raw_dataset(task)["train"].features["label"].names == ["yes", "no", "maybe"]
    renamed = load_raw_dataset({**task, "label_names": ["Y", "N", "M"]})
    assert renamed["train"].features["label"].names == ["Y", "N", "M"]
    with pytest.raises(DataError, match="label_names has 2 names .* the data set has 3 labels"):
        load_raw_dataset({**task, "label_names": ["Y", "N"]})
    with pytest.raises(DataError, match=r"no split validation_matched \(it has train, validation\)"):
        load_raw_dataset({**task, "validation_split": "validation_matched"})


# --- Tokenisation cache --------------------------------------------------------------------

SMALL_SYNTHETIC = {"name": "synthetic", "seed": 0,
                   "synthetic": {"train_size": 200, "validation_size": 50, "label_noise": 0.05}}


def test_prepare_writes_arrow_and_stats(tmp_path):
    out = prepare(SMALL_SYNTHETIC, TOKENIZER, max_length=12, out_dir=tmp_path / "prepared")
    assert (out / "dataset_dict.json").is_file()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["tokenizer"] == TOKENIZER and stats["max_length"] == 12
    assert stats["label_names"] == ["negative", "positive"]
    train = stats["splits"]["train"]
    assert train["examples"] == 200 and sum(train["label_counts"].values()) == 200
    assert 0 < train["truncated_fraction"] < 1  # synthetic sentences run past 12 tokens
    assert train["token_length"]["max"] > 12 >= train["token_length"]["median"] - 12

    prepared = load_prepared(out)
    assert set(prepared["train"].column_names) == {"text", "labels", "input_ids", "attention_mask"}
    lengths = [len(ids) for ids in prepared["train"]["input_ids"]]
    assert max(lengths) == 12 and min(lengths) < 12  # truncated, and not padded
    assert prepared["train"].features["labels"].names == ["negative", "positive"]
    assert not list(tmp_path.glob(".prepared.partial-*"))


def test_prepare_reuses_a_matching_folder_and_redoes_a_different_one(tmp_path, monkeypatch):
    out = prepare(SMALL_SYNTHETIC, TOKENIZER, max_length=32, out_dir=tmp_path / "prepared")

    def must_not_load(cfg):
        raise AssertionError("the data was loaded again")

    monkeypatch.setattr(data, "load_raw_dataset", must_not_load)
    assert prepare(SMALL_SYNTHETIC, TOKENIZER, max_length=32, out_dir=out) == out
    with pytest.raises(AssertionError, match="loaded again"):
        prepare(SMALL_SYNTHETIC, TOKENIZER, max_length=16, out_dir=out)
    with pytest.raises(AssertionError, match="loaded again"):
        prepare(SMALL_SYNTHETIC, TOKENIZER, max_length=32, out_dir=out, force=True)


def test_prepare_notices_a_changed_local_file(tmp_path, sst2_files):
    out = prepare(local_config(*sst2_files), TOKENIZER, max_length=32, out_dir=tmp_path / "prepared")
    assert load_prepared(out)["train"].num_rows == 6
    sst2_files[0].write_text(SST2_TRAIN + "one more line \t1\n")
    prepare(local_config(*sst2_files), TOKENIZER, max_length=32, out_dir=out)
    assert load_prepared(out)["train"].num_rows == 7


def test_an_interrupted_prepare_leaves_nothing_that_looks_prepared(tmp_path, monkeypatch):
    def interrupted(self, path, **kwargs):
        (tmp_path / "started").write_text(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(SMALL_SYNTHETIC, TOKENIZER, max_length=32, out_dir=tmp_path / "prepared")
    assert (tmp_path / "started").exists()
    assert not (tmp_path / "prepared").exists()
    assert not list(tmp_path.glob(".prepared.partial-*"))
    with pytest.raises(FileNotFoundError, match="crisp data"):
        load_prepared(tmp_path / "prepared")
    # the rerun, as a user makes it, builds the folder
    monkeypatch.undo()
    out = prepare(SMALL_SYNTHETIC, TOKENIZER, max_length=32, out_dir=tmp_path / "prepared")
    assert load_prepared(out)["train"].num_rows == 200


def test_prepare_rejects_a_max_length_the_model_cannot_take(tmp_path):
    with pytest.raises(ConfigError, match="'max_length': 1024"):
        prepare(SMALL_SYNTHETIC, TOKENIZER, max_length=1024, out_dir=tmp_path / "prepared")


def test_the_collator_pads_each_batch_to_its_longest_sequence(tmp_path):
    out = prepare(SMALL_SYNTHETIC, TOKENIZER, max_length=64, out_dir=tmp_path / "prepared")
    train = load_prepared(out)["train"].remove_columns("text")
    examples = sorted(train, key=lambda example: len(example["input_ids"]))
    short, long = examples[0], examples[-1]
    assert len(short["input_ids"]) < len(long["input_ids"]) < 64
    batch = data.collator(load_tokenizer(TOKENIZER))([short, long])
    assert batch["input_ids"].shape == (2, len(long["input_ids"]))
    assert batch["attention_mask"][0].sum() == len(short["input_ids"])
    assert batch["labels"].tolist() == [short["labels"], long["labels"]]


# --- Tasks: GLUE presets and resolution ----------------------------------------------------

TASK_SPEC_KEYS = {"name", "train_file", "validation_file", "text_column", "text_pair_column", "label_column",
                  "label_names", "train_split", "validation_split", "metric", "max_train_examples",
                  "max_validation_examples", "seed", "synthetic", "revision"}


@pytest.mark.parametrize("task, columns, metric, validation_split", [
    ("sst2", ("sentence", None), "accuracy", "validation"),
    ("cola", ("sentence", None), "mcc", "validation"),
    ("mrpc", ("sentence1", "sentence2"), "f1", "validation"),
    ("qqp", ("question1", "question2"), "f1", "validation"),
    ("rte", ("sentence1", "sentence2"), "accuracy", "validation"),
    ("qnli", ("question", "sentence"), "accuracy", "validation"),
    ("mnli", ("premise", "hypothesis"), "accuracy", "validation_matched"),
])
def test_a_glue_name_alone_resolves_to_the_whole_task(task, columns, metric, validation_split):
    spec = resolve_task({"name": f"glue/{task}"})
    assert set(spec) == TASK_SPEC_KEYS
    assert (spec["text_column"], spec["text_pair_column"]) == columns
    assert (spec["metric"], spec["validation_split"], spec["train_split"]) == (metric, validation_split, "train")
    assert spec["label_names"] == GLUE_PRESETS[task]["label_names"]
    assert resolve_task(spec) == spec  # resolving twice changes nothing


def test_glue_label_names_follow_glue_order():
    assert GLUE_PRESETS["mnli"]["label_names"] == ["entailment", "neutral", "contradiction"]
    assert GLUE_PRESETS["rte"]["label_names"] == ["entailment", "not_entailment"]
    assert GLUE_PRESETS["mrpc"]["label_names"][1] == "equivalent"  # F1 is of label 1
    assert "stsb" not in GLUE_PRESETS


def test_any_preset_key_can_be_overridden():
    spec = resolve_task({"name": "glue/mrpc", "metric": "accuracy", "validation_split": "test",
                         "max_train_examples": 100, "synthetic": {"label_noise": 0.1}})
    assert (spec["metric"], spec["validation_split"], spec["max_train_examples"]) == ("accuracy", "test", 100)
    assert spec["synthetic"]["train_size"] == 2000 and spec["synthetic"]["label_noise"] == 0.1


@pytest.mark.parametrize("task, key, message", [
    ({"name": "glue/stsb"}, "name", "unknown GLUE task 'glue/stsb'; presets: glue/sst2, glue/cola"),
    ({"name": "glue/sst3"}, "name", "glue/mnli"),
    ({"name": "local", "train_file": "t.tsv"}, "validation_file", "required when tasks.t.name is 'local'"),
    ({"name": "glue/mnli", "metric": "f1"}, "metric", "needs two labels"),
    ({"name": "glue/sst2", "metric": "auc"}, "metric", "not one of accuracy, mcc, f1"),
    ({"text_column": "x"}, "name", "missing"),
    ({"name": 5}, "name", "not text"),
])
def test_a_bad_task_names_the_key(task, key, message):
    with pytest.raises(ConfigError) as raised:
        resolve_task(task, where="tasks.t")
    assert f"config key 'tasks.t.{key}'" in str(raised.value) and message in str(raised.value)


def test_synthetic_pairs_resolve_to_a_pair_task():
    spec = resolve_task({"name": "synthetic", "synthetic": {"pairs": True}})
    assert spec["text_pair_column"] is not None and spec["label_names"] == ["disagree", "agree"]
    assert resolve_task({"name": "synthetic"})["text_pair_column"] is None


# --- Sentence pairs --------------------------------------------------------------------------

def review_sentiment(review: str) -> bool:
    """The rule a reader applies: a positive word, unless negated."""
    words = review.replace("n't", " not").split()
    positive_words = set(synthetic.POSITIVE_WORDS) | {form for forms in synthetic.POSITIVE_VERBS for form in forms}
    return any(word in positive_words for word in words) != any(word in ("not", "never") for word in words)


def test_synthetic_pairs_are_deterministic_and_noisy_at_the_configured_rate():
    first = generate_synthetic_pairs(2000, seed=0, label_noise=0.1)
    assert first.equals(generate_synthetic_pairs(2000, seed=0, label_noise=0.1))
    assert not first["text"].equals(generate_synthetic_pairs(2000, seed=1, label_noise=0.1)["text"])
    clean = generate_synthetic_pairs(2000, seed=0, label_noise=0.0)
    assert clean[["text", "text_pair"]].equals(first[["text", "text_pair"]])
    assert 0.08 < (clean["label"] != first["label"]).mean() < 0.12
    assert 0.45 < clean["label"].mean() < 0.55


def test_synthetic_pairs_defeat_a_bag_of_words_but_not_a_reader():
    train = generate_synthetic_pairs(3000, seed=0, label_noise=0.05)
    held_out = generate_synthetic_pairs(1000, seed=0, label_noise=0.05, split="validation")
    # The same words occur in both classes, in either sentence ...
    for column in ("text", "text_pair"):
        agree = {w for t in train.loc[train["label"] == 1, column] for w in t.split()}
        disagree = {w for t in train.loc[train["label"] == 0, column] for w in t.split()}
        assert len(agree ^ disagree) <= 2 and len(agree) > 50
    # ... so counting them (each sentence's words apart) stays near chance,
    assert 0.4 < bag_of_words_accuracy(train, held_out, ["text", "text_pair"]) < 0.6
    # while reading each review and comparing solves it up to the label noise.
    agree = [review_sentiment(a) == review_sentiment(b) for a, b in zip(held_out["text"], held_out["text_pair"])]
    assert (np.array(agree) == held_out["label"].to_numpy()).mean() > 0.9


def test_pairs_are_tokenised_with_the_pair_template_and_the_longer_side_cut_first(tmp_path):
    long_text = "the plot " * 40
    train = pd.DataFrame({"a": [long_text, "short one", "x"], "b": ["kept whole", "also short", "y"],
                          "label": ["agree", "disagree", "agree"]})
    validation = pd.DataFrame({"a": ["p"], "b": ["q"], "label": [1]})
    task = local_config(write_table(train, tmp_path / "train.csv"), write_table(validation, tmp_path / "dev.csv"),
                        text_column="a", text_pair_column="b", label_names=["disagree", "agree"])
    out = prepare(task, TOKENIZER, max_length=16, out_dir=tmp_path / "prepared")
    tokenizer = load_tokenizer(TOKENIZER)
    prepared = load_prepared(out)["train"]
    assert set(prepared.column_names) == {"text", "text_pair", "labels", "input_ids", "attention_mask",
                                          "token_type_ids"}
    first = prepared[0]
    assert len(first["input_ids"]) == 16
    assert first["input_ids"] == tokenizer(long_text, "kept whole", truncation="longest_first",
                                           max_length=16)["input_ids"]
    decoded = tokenizer.decode(first["input_ids"])
    assert decoded.startswith("[CLS] the plot") and decoded.endswith("[SEP] kept whole [SEP]")
    assert set(first["token_type_ids"]) == {0, 1}
    assert prepared[1]["input_ids"] == tokenizer("short one", "also short")["input_ids"]
    stats = read_stats(out)
    assert stats["pair"] is True and stats["sizes"] == {"train": 3, "validation": 1}
    assert stats["splits"]["train"]["truncated_fraction"] == pytest.approx(1 / 3, abs=1e-5)
    batch = data.collator(tokenizer)([prepared.remove_columns(["text", "text_pair"])[i] for i in (0, 1)])
    assert batch["token_type_ids"].shape == batch["input_ids"].shape == (2, 16)


def test_a_three_label_pair_task_prepares_end_to_end(tmp_path, monkeypatch):
    fake_hub(monkeypatch, {"premise": "the premise number ", "hypothesis": "a hypothesis "},
             ["entailment", "neutral", "contradiction"], {"train": 12, "validation_matched": 6})
    out = prepare({"name": "glue/mnli"}, TOKENIZER, max_length=32, out_dir=tmp_path / "mnli")
    stats = read_stats(out)
    assert stats["label_names"] == ["entailment", "neutral", "contradiction"]
    assert (stats["metric"], stats["pair"]) == ("accuracy", True)
    assert stats["splits"]["validation"]["label_counts"] == {"entailment": 2, "neutral": 2, "contradiction": 2}
    prepared = load_prepared(out)
    assert prepared["validation"].features["labels"].names == stats["label_names"]
    assert sorted(set(prepared["train"]["labels"])) == [0, 1, 2]


def test_synthetic_pairs_prepare_with_stats(tmp_path):
    task = {"name": "synthetic", "synthetic": {"pairs": True, "train_size": 60, "validation_size": 20}}
    out = prepare(task, TOKENIZER, max_length=48, out_dir=tmp_path / "pairs")
    stats = read_stats(out)
    assert stats["label_names"] == ["disagree", "agree"] and stats["pair"] is True
    assert stats["splits"]["train"]["token_length"]["mean"] > 10
    assert load_prepared(out)["train"][0]["input_ids"].count(102) == 2  # [SEP] after each sentence


# --- Interrupted and incomplete caches -------------------------------------------------------

def test_a_prepare_killed_mid_write_is_never_used_and_the_rerun_rebuilds(tmp_path):
    out = tmp_path / "prepared"
    script = textwrap.dedent(f"""
        import os, signal, datasets
        from crisp import data

        def killed_mid_write(self, path, **kwargs):
            os.makedirs(path, exist_ok=True)
            with open(os.path.join(path, "dataset_dict.json"), "w") as handle:
                handle.write('{{"splits": ["tr')
            os.kill(os.getpid(), signal.SIGKILL)

        datasets.DatasetDict.save_to_disk = killed_mid_write
        data.prepare({SMALL_SYNTHETIC!r}, {TOKENIZER!r}, 32, {str(out)!r})
    """)
    finished = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True,
                              env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert finished.returncode == -9, finished.stderr
    assert list(tmp_path.glob(".prepared.partial-*")) and not out.exists()
    with pytest.raises(FileNotFoundError, match="No prepared data"):
        load_prepared(out)
    prepare(SMALL_SYNTHETIC, TOKENIZER, max_length=32, out_dir=out)
    assert load_prepared(out)["train"].num_rows == 200
    assert sorted(path.name for path in tmp_path.iterdir()) == ["prepared"]  # the leftover is gone


def test_a_folder_without_its_completion_marker_is_refused_then_rebuilt(tmp_path, monkeypatch):
    out = prepare(SMALL_SYNTHETIC, TOKENIZER, max_length=32, out_dir=tmp_path / "prepared")
    (out / "stats.json").unlink()
    with pytest.raises(DataError, match="not a complete prepared data set: stats.json, which is written last"):
        load_prepared(out)
    prepare(SMALL_SYNTHETIC, TOKENIZER, max_length=32, out_dir=out)
    assert read_stats(out)["sizes"] == {"train": 200, "validation": 50}
    (out / "stats.json").write_text('{"tokenizer": ')  # truncated
    with pytest.raises(DataError, match="stats.json' cannot be read"):
        load_prepared(out)
