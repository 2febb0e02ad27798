"""Local data files: labels matched by one rule (crisp/labels.py), and what cannot be read named for
what it is."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from crisp.data import load_raw_dataset
from crisp.errors import DataError
from crisp.tabular import normalise_frame

VALIDATION = "sentence\tlabel\nfine work\t1\nweak work\t0\n"


def load(tmp_path: Path, train_text: str | None, label_names, validation_text: str | None = None, **task):
    train = tmp_path / "train.tsv"
    if train_text is not None:
        train.write_text(train_text)
    validation = tmp_path / "validation.tsv"
    validation.write_text(validation_text or train_text or VALIDATION)
    return load_raw_dataset(
        {"name": "local", "train_file": str(train), "validation_file": str(validation), "label_names": label_names,
         **task}
    )


def tsv(labels) -> str:
    return "sentence\tlabel\n" + "".join(f"review {i}\t{label}\n" for i, label in enumerate(labels))


def test_label_names_that_differ_only_in_case_are_rejected_naming_the_file(tmp_path):
    with pytest.raises(DataError, match=r"train.tsv.*'A' and 'a' differ only in case"):
        load(tmp_path, tsv(["A", "a", "b"]), ["A", "a", "b"])


def test_names_that_look_like_numbers_are_matched_as_names_not_indices(tmp_path):
    raw = load(tmp_path, tsv([1, 2, 1, 2]), ["1", "2", "3"])
    assert raw["train"]["label"] == [0, 1, 0, 1]
    assert raw["train"].features["label"].names == ["1", "2", "3"]


def test_a_negative_number_as_a_label_name_is_matched(tmp_path):
    raw = load(tmp_path, tsv(["-1", "1", "1.0", " -1"]), ["-1", "1"])
    assert raw["train"]["label"] == [0, 1, 1, 0]


def test_with_numeric_names_an_index_is_not_a_label_and_the_row_is_named(tmp_path):
    with pytest.raises(DataError) as error:
        load(tmp_path, tsv(["1", "2", "0"]), ["1", "2"])
    message = str(error.value)
    assert "train.tsv" in message and "data row 3 (line 4" in message and "label '0'" in message
    assert "look like numbers" in message


def test_word_names_still_take_indices_and_any_case(tmp_path):
    raw = load(tmp_path, tsv(["0", "Positive", " NEGATIVE", "1"]), ["negative", "positive"])
    assert raw["train"]["label"] == [0, 1, 0, 1]


def test_a_hub_class_label_column_is_indices_even_with_numeric_names():
    frame = pd.DataFrame({"sentence": ["a", "b", "c"], "label": [0, 1, 2]})
    table = normalise_frame(frame, "hub", lambda i: f"row {i + 1}", "sentence", "label", ["1", "2", "3"],
                            labels_are_indices=True)
    assert table["label"].tolist() == [0, 1, 2]


def test_a_folder_given_as_train_file_is_named_a_folder(tmp_path):
    (tmp_path / "train.tsv").mkdir()
    with pytest.raises(DataError, match=r"train.tsv' is a folder, not a file"):
        load(tmp_path, None, None, validation_text=VALIDATION)


def test_a_fifo_given_as_train_file_is_named_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "train.tsv")
    with pytest.raises(DataError, match=r"train.tsv' is a FIFO"):
        load(tmp_path, None, None, validation_text=VALIDATION)


def test_a_parquet_text_column_of_lists_is_reported_as_lists(tmp_path):
    train = tmp_path / "train.parquet"
    pd.DataFrame({"sentence": [["good", "film"], ["bad", "film"]], "label": [1, 0]}).to_parquet(train)
    validation = tmp_path / "validation.tsv"
    validation.write_text(VALIDATION)
    with pytest.raises(DataError) as error:
        load_raw_dataset({"name": "local", "train_file": str(train), "validation_file": str(validation)})
    message = str(error.value)
    assert "train.parquet" in message and "row 1" in message and "a list" in message and "'sentence'" in message
    assert "empty or missing" not in message
