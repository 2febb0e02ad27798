"""Tables of labelled sentences: reading local data files, and checking a table from any source.

read_local_split reads a local task's train_file or validation_file (.tsv, .csv, .jsonl or .parquet;
the formats are described in crisp.data's docstring) and returns it as columns text, text_pair (pair
tasks only) and label (0..K-1); normalise_frame does the checking and converting, and crisp.data also
gives it the Hub's splits.

What it guarantees: bad input (another encoding, a ragged row, broken JSON, a missing column, an empty
text, a label outside the set) gets one clear DataError that names the file and the row or line to fix.
Nothing is lost on the way: every data row is kept (only blank lines are skipped), and every field
whole (no size limit; .tsv is read without quote handling, so the quote characters of GLUE's
sentences stay in the text).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import numbers
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from crisp.errors import DataError
from crisp.labels import label_key, label_names_problem, names_look_like_numbers

SUPPORTED_EXTENSIONS = (".tsv", ".csv", ".jsonl", ".parquet")
# csv's default limit is 128 KiB per field; a long document is data, not an error.
MAX_FIELD_CHARS = 2**31 - 1


# --- Local files ---------------------------------------------------------------------------


def read_local_split(spec: dict, split: str, label_names: list[str]) -> pd.DataFrame:
    key = f"{split}_file"
    if not spec.get(key):
        raise DataError(
            f"the task's name is 'local' but its {key} is not set: give the path of the "
            f"{split} file (.tsv, .csv, .jsonl or .parquet)."
        )
    path = Path(spec[key]).expanduser()
    frame, describe_row = read_table(path)
    return normalise_frame(
        frame,
        str(path),
        describe_row,
        spec["text_column"],
        spec["label_column"],
        label_names,
        text_pair_column=spec["text_pair_column"],
    )


def read_table(path: Path) -> tuple[pd.DataFrame, Callable[[int], str]]:
    """Read a data file as text columns; also return how to name its i-th data row (0-based) in messages.

    Anything wrong with the file itself raises DataError naming the file (and line, where one applies).
    """
    if not path.is_file():
        if path.is_dir():
            problem = "is a folder, not a file: give the path of the file in it"
        elif path.exists():
            kind = "a FIFO (named pipe)" if stat.S_ISFIFO(path.stat().st_mode) else "not a regular file"
            problem = f"is {kind}: give the path of a regular file (it is read more than once)"
        else:
            problem = "does not exist"
        raise DataError(
            f"Data file '{path}' {problem}. Check the task's train_file / validation_file "
            "(relative paths start from the working directory)."
        )
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise DataError(
            f"Data file '{path}' has extension '{suffix}'; supported are "
            f"{', '.join(SUPPORTED_EXTENSIONS)}. Convert it or rename it if it is one of them."
        )
    if suffix == ".parquet":
        try:
            return pd.read_parquet(path), lambda i: f"row {i + 1}"
        except Exception as error:  # pyarrow raises its own error types for a damaged file
            raise DataError(f"Data file '{path}' could not be read as parquet: {error}.") from error
    text = _decode(path)
    if suffix == ".jsonl":
        return _read_jsonl(path, text)
    return _read_delimited(path, text, "\t" if suffix == ".tsv" else ",")


def _decode(path: Path) -> str:
    """The file's text: UTF-8, or what its byte-order mark says; the mark itself is dropped."""
    raw = path.read_bytes()
    encoding = "utf-8"
    for mark, marked_encoding in (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if raw.startswith(mark):
            encoding = marked_encoding
            break
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(
            f"Data file '{path}': line {line} is not {encoding.upper()} text (byte "
            f"{raw[error.start]:#04x} at offset {error.start}). Save the file as UTF-8; it may be "
            "in Latin-1 or Windows-1252."
        ) from error


def _read_delimited(path: Path, text: str, delimiter: str) -> tuple[pd.DataFrame, Callable[[int], str]]:
    tsv = delimiter == "\t"
    # GLUE's TSVs are unquoted and their sentences contain quote characters; CSV quotes strictly.
    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter=delimiter,
        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
        strict=not tsv,
    )
    header, rows, lines = None, [], []
    previous_limit = csv.field_size_limit(MAX_FIELD_CHARS)
    try:
        for row in reader:
            if not any(field.strip() for field in row):  # a blank line
                continue
            if header is None:
                header = _check_header(path, row, reader.line_num)
                continue
            if len(row) != len(header):
                tab_hint = (
                    (
                        " (a tab inside a sentence splits it in two: remove it, or use .csv with the "
                        "sentence in double quotes)"
                    )
                    if tsv and len(row) > len(header)
                    else ""
                )
                raise DataError(
                    f"Data file '{path}': line {reader.line_num} has {len(row)} fields but the "
                    f"header has {len(header)} ({', '.join(header)}){tab_hint}."
                )
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as error:
        raise DataError(
            f"Data file '{path}': line {reader.line_num} could not be read as "
            f"{'tsv' if tsv else 'csv'}: {error}. Check its quotes."
        ) from error
    finally:
        csv.field_size_limit(previous_limit)
    if header is None:
        raise DataError(f"Data file '{path}' is empty: it needs a header line naming its columns, then data rows.")
    frame = pd.DataFrame(rows, columns=header, dtype=object)
    return frame, lambda i: f"data row {i + 1} (line {lines[i]} of the file)"


def _check_header(path: Path, header: list[str], line: int) -> list[str]:
    header = [name.strip() for name in header]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(
            f"Data file '{path}': the header (line {line}) names column(s) "
            f"{', '.join(map(repr, repeated))} more than once."
        )
    return header


def _read_jsonl(path: Path, text: str) -> tuple[pd.DataFrame, Callable[[int], str]]:
    records, line_numbers = [], []
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as error:
            reason = getattr(error, "msg", type(error).__name__)
            raise DataError(
                f"Data file '{path}': line {line_number} is not valid JSON ({reason}). "
                "Each line must be one JSON object."
            ) from error
        if not isinstance(record, dict):
            raise DataError(
                f"Data file '{path}': line {line_number} is a JSON {type(record).__name__}, "
                'not an object like {"sentence": ..., "label": ...}.'
            )
        records.append(record)
        line_numbers.append(line_number)
    return pd.DataFrame.from_records(records), lambda i: f"line {line_numbers[i]}"


# --- Checking a table: columns, texts and labels -------------------------------------------


def normalise_frame(
    frame: pd.DataFrame,
    source: str,
    describe_row: Callable[[int], str],
    text_column: str,
    label_column: str,
    label_names: list[str],
    text_pair_column: str | None = None,
    labels_are_indices: bool = False,
) -> pd.DataFrame:
    """Check one split and return it as columns text, text_pair (pairs only) and label (0..K-1).

    Labels may be integers (also "1" or 1.0) or label names ("positive", any case), matched as
    crisp.labels says; `labels_are_indices` (a Hub ClassLabel column) reads integers as indices even
    when names look like numbers. Checks are vectorised: SST-2's 67k rows take a fraction of a second.
    """
    text_roles = {"text": ("text_column", text_column)}
    if text_pair_column is not None:
        text_roles["text_pair"] = ("text_pair_column", text_pair_column)
    for role, column in (*text_roles.values(), ("label_column", label_column)):
        if column not in frame.columns:
            raise DataError(
                f"{source}: no column '{column}' (the task's {role}). Columns found: "
                f"{', '.join(map(str, frame.columns)) or 'none'}. Set {role} "
                "to the right one, or add a header line if the file has none."
            )
    if frame.empty:
        raise DataError(f"{source}: has no data rows.")

    normalised = {}
    for output, (_, column) in text_roles.items():
        text = frame[column]
        bad_text = ~text.map(lambda value: isinstance(value, str) and bool(value.strip())).to_numpy(dtype=bool)
        if bad_text.any():
            first = int(np.argmax(bad_text))
            value = text.iloc[first]
            missing = value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))
            if isinstance(value, str) or missing:
                problem, fix = "an empty or missing text", "Remove or fill in those rows."
            else:
                kind = "a list" if isinstance(value, (list, tuple, np.ndarray)) else f"a {type(value).__name__}"
                problem = f"{kind} ({_shown(value)}) where text is expected"
                fix = "Give the text as one string per row, or set the task's text columns to other columns."
            raise DataError(
                f"{source}: {describe_row(first)} has {problem} in column "
                f"'{column}' ({int(bad_text.sum())} such rows in all). {fix}"
            )
        normalised[output] = text.to_numpy(dtype=object)

    # The matching rule is crisp.labels': names ignoring case, numbers by value, and integers as
    # indices only when no name looks like a number (or the source says they are: a Hub ClassLabel).
    problem = label_names_problem(label_names)
    if problem:
        raise DataError(f"{source}: the task's label_names cannot be told apart: {problem}.")
    numeric_names = names_look_like_numbers(label_names) and not labels_are_indices
    raw_labels = frame[label_column]
    as_text = raw_labels.map(_label_text)
    index_of = {label_key(name): float(i) for i, name in enumerate(label_names)}
    by_name = as_text.map({text: index_of.get(label_key(text), np.nan) for text in as_text.dropna().unique()})
    by_name = by_name.astype("float64")
    if numeric_names:
        labels = by_name.to_numpy(dtype="float64", na_value=np.nan)
    else:
        numbers = pd.to_numeric(as_text, errors="coerce")
        labels = numbers.fillna(by_name).to_numpy(dtype="float64", na_value=np.nan)
    bad_label = ~np.isin(labels, np.arange(len(label_names)))  # NaN, fractions and out-of-range values all fail
    if bad_label.any():
        first = int(np.argmax(bad_label))
        value = raw_labels.iloc[first]
        value = value.item() if isinstance(value, np.generic) else value  # 7, not np.int64(7)
        rule = (
            " (the label names look like numbers, so labels are read as names, not as indices 0..K-1)"
            if numeric_names
            else ""
        )
        raise DataError(
            f"{source}: {describe_row(first)} has label {_shown(value)} in column "
            f"'{label_column}', which is not one of the allowed labels "
            f"{_describe_labels(label_names)}{rule} ({int(bad_label.sum())} such rows in all). "
            "Fix those rows, or set the task's label_column / label_names."
        )
    return pd.DataFrame({**normalised, "label": labels.astype("int64")})


def _label_text(value) -> str | None:
    """A label as text to read as a number or a name; None for what is neither (true, null, a list)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return str(value)
    return None


def _shown(value) -> str:
    """A value as a message shows it: its repr, shortened."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe_labels(label_names: list[str]) -> str:
    return ", ".join(f"{i} ({name})" for i, name in enumerate(label_names))
