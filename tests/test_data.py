"""Data sources, the checks on bad data, and the tokenisation cache."""

import csv
import json
import re
import time

import datasets
import numpy as np
import pandas as pd
import pytest
import torch

from crisp import data
from crisp.data import DataError, generate_synthetic, load_prepared, load_raw_dataset, prepare
from crisp.errors import ConfigError
from crisp.modeling import HubUnreachableError, load_tokenizer

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
    assert sum(text.count(f" {word} ") for word in data.INTENSIFIERS) > 200


def test_synthetic_negation_and_contrast_decide_the_label():
    frame = generate_synthetic(3000, seed=0, label_noise=0.0)
    adjective = r"(?:(?:" + "|".join(data.INTENSIFIERS) + r") )?(\w+)"
    negated = re.compile(r"^[\w ]+ (?:is|was|are|were) not " + adjective + r"(?: [.!])?$")
    contrast = re.compile(r", but [\w ]+ (?:is|was|are|were) " + adjective + r"(?: [.!])?$")
    positive = set(data.POSITIVE_WORDS)
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
    with pytest.raises(ValueError, match="label_noise"):
        generate_synthetic(10, seed=0, label_noise=0.7)


def test_a_bag_of_words_cannot_solve_synthetic_data():
    # Logistic regression on word counts, trained without label noise: words alone carry
    # some signal, but negation and "X, but Y" need word order.
    train, held_out = generate_synthetic(3000, seed=0), generate_synthetic(1000, seed=0, split="validation")
    vocabulary = {word: i for i, word in enumerate(sorted({w for t in train["text"] for w in t.split()}))}

    def counts(texts):
        matrix = torch.zeros(len(texts), len(vocabulary))
        for row, text in enumerate(texts):
            for word in text.split():
                if word in vocabulary:
                    matrix[row, vocabulary[word]] += 1
        return matrix

    features, labels = counts(train["text"]), torch.tensor(train["label"].to_numpy(), dtype=torch.float32)
    torch.manual_seed(0)
    classifier = torch.nn.Linear(len(vocabulary), 1)
    optimiser = torch.optim.Adam(classifier.parameters(), lr=0.05)
    for _ in range(300):
        optimiser.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(classifier(features).squeeze(1), labels).backward()
        optimiser.step()
    with torch.no_grad():
        predictions = classifier(counts(held_out["text"])).squeeze(1) > 0
    accuracy = (predictions.numpy() == held_out["label"].to_numpy()).mean()
    assert 0.55 < accuracy < 0.9


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
     ["no column 'sentence'", "dataset.text_column", "Columns found: text, label"]),
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
    ("train.tsv", "sentence\tlabel\ngood\t1\tx\tz\n", ["could not be read"]),
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
    with pytest.raises(DataError, match="dataset.validation_file is not set"):
        load_raw_dataset({"name": "local", "train_file": str(sst2_files[0])})


def test_validation_labels_must_occur_in_training(tmp_path):
    (tmp_path / "train.csv").write_text("sentence,label\ngood,2\nbad,0\n")
    (tmp_path / "dev.csv").write_text("sentence,label\nfine,0\nokay,1\n")
    config = local_config(tmp_path / "train.csv", tmp_path / "dev.csv", label_names=["neg", "neutral", "pos"])
    with pytest.raises(DataError, match=r"dev.csv: data row 2 has label 1, which never occurs"):
        load_raw_dataset(config)


def test_a_cap_that_leaves_one_class_is_reported(sst2_files):
    with pytest.raises(DataError, match="after sampling dataset.max_train_examples = 1 rows"):
        load_raw_dataset(local_config(*sst2_files, max_train_examples=1))


def test_validation_is_fast_enough_for_sst2_sized_files(tmp_path):
    rows = 67_349
    frame = pd.DataFrame({"sentence": ["a perfectly ordinary sentence "] * rows, "label": np.arange(rows) % 2})
    write_table(frame, tmp_path / "train.tsv")
    write_table(frame.head(872), tmp_path / "dev.tsv")
    started = time.monotonic()
    raw = load_raw_dataset(local_config(tmp_path / "train.tsv", tmp_path / "dev.tsv"))
    assert raw["train"].num_rows == rows
    assert time.monotonic() - started < 5


# --- Hub data sets -------------------------------------------------------------------------

def test_an_uncached_hub_dataset_fails_fast_with_offline_advice(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for variable in data.DATASET_OFFLINE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    started = time.monotonic()
    with pytest.raises(HubUnreachableError) as raised:
        load_raw_dataset({"name": "crisp-tests/not-a-dataset"})
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert "Data set 'crisp-tests/not-a-dataset'" in message and "cannot be reached" in message
    assert "name: local" in message and "name: synthetic" in message and "config/demo.yaml" in message


def test_datasets_offline_switch_is_respected(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(HubUnreachableError, match="HF_DATASETS_OFFLINE=1"):
        load_raw_dataset({"name": "glue/sst2"})


def test_hub_datasets_use_their_train_and_validation_splits(monkeypatch):
    features = datasets.Features({"sentence": datasets.Value("string"), "idx": datasets.Value("int32"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})

    def fake_load_dataset(path, name):
        assert (path, name) == ("glue", "sst2")
        split = lambda n: datasets.Dataset.from_dict(  # noqa: E731
            {"sentence": [f"s{i}" for i in range(n)], "idx": list(range(n)), "label": [i % 2 for i in range(n)]},
            features=features)
        return datasets.DatasetDict({"train": split(10), "validation": split(4), "test": split(3)})

    monkeypatch.setattr(data.datasets, "load_dataset", fake_load_dataset)
    raw = load_raw_dataset({"name": "glue/sst2"})
    assert set(raw) == {"train", "validation"}  # never the unlabelled test split
    assert raw["validation"]["text"] == ["s0", "s1", "s2", "s3"]
    assert raw["train"].features["label"].names == ["negative", "positive"]


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
    with pytest.raises(FileNotFoundError, match="crisp prepare"):
        load_prepared(tmp_path / "prepared")


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
