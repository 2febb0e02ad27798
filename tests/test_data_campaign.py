"""A bad-input campaign for local data files (hypothesis): every file either loads as written, or is
rejected with a DataError that names the file (and the line, where one is to blame), never another
exception.

What loads: UTF-8 with or without a byte-order mark, UTF-16/32 with one, LF or CRLF line ends,
blank lines anywhere, quoted CSV fields holding tabs, commas and quotes, very long lines, labels
as numbers ("1", "1.0") or label names in any case, and label names that look like numbers
(["-1", "1"], ["1", "2", "3"]), matched by value however the file writes them. What is rejected:
other encodings (Latin-1), ragged rows, a tab inside a TSV sentence, labels outside the set, an
index 0..K-1 where the names look like numbers, label names that differ only in case, empty texts,
a header only, an empty file, a missing file, a missing column, broken JSON, and random damage to
the bytes.

The cases tried and rejected are counted; the count is printed at the end of the module's run:
    python -m pytest -q tests/test_data_campaign.py        (or: python tests/test_data_campaign.py)
and written as JSON to $CRISP_DATA_CAMPAIGN_SUMMARY when that is set. The examples are
derandomised, so the same command gives the same counts with the same hypothesis version; run in
one process with other test modules, the cases drawn (and so the counts) can differ slightly.
"""

import codecs
import collections
import csv
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
from campaign_helpers import report_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crisp.data import load_raw_dataset
from crisp.errors import DataError

COUNTS: collections.Counter = collections.Counter()
CAMPAIGN = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
VALIDATION = "sentence\tlabel\nfine work\t1\nweak work\t0\n"
FORMATS = (".tsv", ".csv", ".jsonl")


@pytest.fixture(scope="module", autouse=True)
def campaign_summary(request):
    yield
    line = (f"data campaign: {COUNTS['tried']} cases tried, {COUNTS['loaded']} loaded as written, "
            f"{COUNTS['rejected']} rejected with a DataError naming the file, 0 other exceptions")
    report_line(request, line)
    if os.environ.get("CRISP_DATA_CAMPAIGN_SUMMARY"):
        Path(os.environ["CRISP_DATA_CAMPAIGN_SUMMARY"]).write_text(json.dumps(dict(COUNTS), indent=2) + "\n")


def try_loading(train_path: Path, validation: str = VALIDATION, **task):
    """Load a training file beside a good validation file: (data, None) or (None, DataError message).

    Any other exception escapes and fails the test; hypothesis then shrinks the file that caused it.
    """
    validation_path = train_path.parent / "validation.tsv"
    validation_path.write_text(validation)
    COUNTS["tried"] += 1
    try:
        raw = load_raw_dataset({"name": "local", "train_file": str(train_path),
                                "validation_file": str(validation_path), **task})
    except DataError as error:
        COUNTS["rejected"] += 1
        assert str(train_path) in str(error)
        return None, str(error)
    COUNTS["loaded"] += 1
    return raw, None


# --- What a data file holds ------------------------------------------------------------------

def sentences(alphabet=None):
    characters = alphabet if alphabet is not None else st.characters(blacklist_categories=("Cs", "Cc"))
    return st.text(characters, min_size=1, max_size=40).filter(lambda text: text.strip())


@st.composite
def rows(draw, text=None):
    """Between 2 and 8 (sentence, label) rows with both labels present."""
    count = draw(st.integers(2, 8))
    labels = draw(st.lists(st.integers(0, 1), min_size=count, max_size=count).filter(lambda ls: len(set(ls)) == 2))
    text = text if text is not None else sentences()
    return [(draw(text), label) for label in labels]


def render(rows_, extension: str, label_text=str, crlf=False, blank_lines=()) -> str:
    """The file's text: a header and one line per row (JSON Lines: one object per line)."""
    if extension == ".jsonl":
        lines = [json.dumps({"sentence": sentence, "label": label_text(label)}, ensure_ascii=False)
                 for sentence, label in rows_]
    elif extension == ".tsv":
        lines = ["sentence\tlabel", *(f"{sentence}\t{label_text(label)}" for sentence, label in rows_)]
    else:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([("sentence", "label"),
                                                           *((s, label_text(label)) for s, label in rows_)])
        lines = buffer.getvalue().split("\n")[:-1]
    for position, blank in sorted(blank_lines, reverse=True):
        lines.insert(min(position, len(lines)), blank)
    return ("\r\n" if crlf else "\n").join(lines) + ("\r\n" if crlf else "\n")


def line_of(row: int, extension: str) -> int:
    """The line a data row is on in a file written by render without blank lines."""
    return row + 1 if extension == ".jsonl" else row + 2


def no_tab(text: str) -> bool:
    return "\t" not in text


# --- Files that must load ------------------------------------------------------------------

LABEL_WORDS = {0: ["negative", "Negative", " NEGATIVE ", "0.0", " 0"], 1: ["positive", "Positive ", "POSITIVE", "1.0"]}
# name -> (byte-order mark written by hand, codec); Python's utf-16 and utf-32 codecs write their own mark
ENCODINGS = {"utf-8": (b"", "utf-8"), "utf-8 with BOM": (codecs.BOM_UTF8, "utf-8"), "utf-16": (b"", "utf-16"),
             "utf-32": (b"", "utf-32")}


@CAMPAIGN
@given(extension=st.sampled_from(FORMATS), data=st.data(), encoding=st.sampled_from(list(ENCODINGS)),
       crlf=st.booleans(), label_words=st.booleans(), long_line=st.booleans(),
       blank_lines=st.lists(st.tuples(st.integers(0, 10), st.sampled_from(["", "   ", "\t"])), max_size=3))
def test_well_formed_files_load_exactly_as_written(extension, data, encoding, crlf, label_words, long_line,
                                                   blank_lines):
    # A TSV sentence cannot hold a tab (it would be a second field); CSV quotes one.
    text = sentences().filter(no_tab) if extension == ".tsv" else sentences()
    written = data.draw(rows(text))
    if long_line:  # longer than csv's default field limit of 128 KiB
        written[0] = ("a long review " * 12_000, written[0][1])
    if extension == ".jsonl":
        blank_lines = [(position, blank) for position, blank in blank_lines if blank != "\t"]
    label_text = (lambda label: data.draw(st.sampled_from(LABEL_WORDS[label]))) if label_words else str
    content = render(written, extension, label_text, crlf, blank_lines)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"train{extension}"
        mark, codec = ENCODINGS[encoding]
        path.write_bytes(mark + content.encode(codec))
        raw, error = try_loading(path)
    assert error is None
    assert raw["train"]["text"] == [sentence for sentence, _ in written]
    assert raw["train"]["label"] == [label for _, label in written]


# Label names that look like numbers: matched by value, never read as indices 0..K-1.
NUMERIC_NAMES = (["-1", "1"], ["1", "2", "3"], ["10", "20"], ["0.5", "1.5"], ["1", "0"])


def spellings(name: str) -> list[str]:
    """Ways a file may write the label `name`: as named, padded, and as the same number another way."""
    number = float(name)
    forms = [name, f" {name} ", repr(number)]
    return forms + ([f"{int(number)}.00"] if number.is_integer() else [])


@CAMPAIGN
@given(extension=st.sampled_from(FORMATS), names=st.sampled_from(NUMERIC_NAMES), data=st.data())
def test_label_names_that_look_like_numbers_load_by_value(extension, names, data):
    written = data.draw(rows(sentences().filter(no_tab)))
    content = render(written, extension, lambda label: data.draw(st.sampled_from(spellings(names[label]))))
    validation = f"sentence\tlabel\nfine work\t{names[1]}\nweak work\t{names[0]}\n"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"train{extension}"
        path.write_text(content)
        raw, error = try_loading(path, validation, label_names=names)
    assert error is None
    assert raw["train"]["label"] == [label for _, label in written]
    assert raw["train"].features["label"].names == names


# --- Files that must be rejected, naming the file and the line -------------------------------

DEFECTS = ("label outside the set", "ragged row", "latin-1 text", "empty text", "tab inside a tsv sentence",
           "broken json", "header only", "empty file", "missing file", "missing column",
           "an index where names look like numbers", "label names that differ only in case")


@CAMPAIGN
@given(defect=st.sampled_from(DEFECTS), extension=st.sampled_from(FORMATS), data=st.data())
def test_defective_files_are_rejected_with_the_file_and_line(defect, extension, data):
    if defect == "tab inside a tsv sentence":
        extension = ".tsv"
    if defect == "broken json":
        extension = ".jsonl"
    ascii_text = sentences(st.characters(min_codepoint=32, max_codepoint=126)).filter(no_tab)
    written = data.draw(rows(ascii_text))
    row = data.draw(st.integers(0, len(written) - 1))
    sentence, label = written[row]
    expected = [f"line {line_of(row, extension)}"]
    task, validation = {}, VALIDATION
    if defect == "an index where names look like numbers":
        names = data.draw(st.sampled_from([names for names in NUMERIC_NAMES if "0" not in names]))
        task, validation = {"label_names": names}, f"sentence\tlabel\nfine\t{names[1]}\nweak\t{names[0]}\n"
        written = [(text, names[label]) for text, label in written]
        written[row] = (sentence, "0")  # index 0, not a name
        content = render(written, extension)
        expected = [f"data row {row + 1} (line {row + 2}" if extension != ".jsonl" else expected[0],
                    "label '0'", "look like numbers"]
    elif defect == "label names that differ only in case":
        task = {"label_names": data.draw(st.sampled_from([["Negative", "negative"], ["no", "yes", "YES"]]))}
        content, expected = render(written, extension), ["differ only in case"]
    elif defect == "label outside the set":
        bad = data.draw(st.sampled_from(["2", "-1", "7", "0.5", "maybe", "yes", "", "1e9"]))
        expected = [f"data row {row + 1} (line {row + 2}" if extension != ".jsonl" else expected[0],
                    f"label {bad!r}", "not one of the allowed labels"]
        written[row] = (sentence, bad)
        content = render(written, extension)
    elif defect == "ragged row":
        if extension == ".jsonl":  # a record without its label
            record = json.dumps({"sentence": sentence, "label": str(label)}, ensure_ascii=False)
            content = render(written, extension).replace(record, json.dumps({"sentence": sentence}), 1)
            first = written.index((sentence, label))  # replace() changed the first identical record
            expected = [f"line {first + 1}", "not one of the allowed labels"]
        else:
            separator = "\t" if extension == ".tsv" else ","
            lines = render(written, extension).split("\n")
            lines[row + 1] = data.draw(st.sampled_from([lines[row + 1] + separator + "extra",
                                                        lines[row + 1].rsplit(separator, 1)[0]]))
            content = "\n".join(lines)
            expected.append("fields but the header has 2")
    elif defect == "latin-1 text":
        written[row] = ("café " + sentence, label)
        content = render(written, extension)
        expected += ["not UTF-8 text", "Latin-1"]
    elif defect == "empty text":
        written[row] = (data.draw(st.sampled_from([" ", "   ", "\u00a0"])), label)
        content = render(written, extension)
        expected.append("empty or missing text")
    elif defect == "tab inside a tsv sentence":
        written[row] = (f'"{sentence}\tmore"', label)
        content = render(written, extension)
        expected += ["has 3 fields", "tab inside a sentence"]
    elif defect == "broken json":
        lines = render(written, extension).split("\n")
        cut = data.draw(st.integers(1, len(lines[row]) - 1))
        lines[row] = lines[row][:cut]
        content = "\n".join(lines)
        expected.append("not valid JSON")
    elif defect == "header only":
        content, expected = ("" if extension == ".jsonl" else render([], extension)), ["no data rows"]
        if extension == ".jsonl":
            expected = ["no column 'sentence'"]  # an empty JSON Lines file has no columns at all
    elif defect == "empty file":
        content, expected = "", ["is empty" if extension != ".jsonl" else "no column 'sentence'"]
    elif defect == "missing file":
        content, expected = None, ["does not exist"]
    else:  # missing column
        content = render(written, extension)
        content = (content.replace('{"sentence":', '{"review":') if extension == ".jsonl"
                   else content.replace("sentence", "review", 1))
        expected = ["no column 'sentence'", "Columns found: review, label"]

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"train{extension}"
        if content is not None:
            path.write_bytes(content.encode("latin-1" if defect == "latin-1 text" else "utf-8"))
        raw, error = try_loading(path, validation, **task)
    assert error is not None, f"{defect}: loaded {raw}"
    for part in expected:
        assert part in error, (defect, part, error)


# --- Random damage: loads or is rejected, never crashes --------------------------------------

@CAMPAIGN
@given(extension=st.sampled_from((*FORMATS, ".parquet")), data=st.data(),
       damage=st.lists(st.tuples(st.sampled_from(["insert", "delete", "truncate", "duplicate line", "swap"]),
                                 st.integers(0, 10_000), st.binary(min_size=1, max_size=8)), min_size=1, max_size=4))
def test_damaged_files_load_or_are_rejected_cleanly(extension, data, damage):
    written = data.draw(rows())
    content = bytearray(render(written, ".csv" if extension == ".parquet" else extension).encode("utf-8"))
    for kind, position, noise in damage:
        position %= max(len(content), 1)
        if kind == "insert":
            content[position:position] = noise
        elif kind == "delete":
            del content[position:position + len(noise)]
        elif kind == "truncate":
            del content[position:]
        elif kind == "duplicate line":
            lines = bytes(content).split(b"\n")
            lines.insert(position % len(lines), lines[position % len(lines)])
            content = bytearray(b"\n".join(lines))
        else:
            content[position:position + len(noise)] = noise
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"train{extension}"
        path.write_bytes(bytes(content))
        raw, error = try_loading(path)
    assert (raw is None) != (error is None)
    if raw is not None:
        assert set(raw["train"]["label"]) <= {0, 1} and all(text.strip() for text in raw["train"]["text"])


@CAMPAIGN
@given(extension=st.sampled_from((*FORMATS, ".parquet")), content=st.binary(max_size=300))
def test_arbitrary_bytes_load_or_are_rejected_cleanly(extension, content):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"train{extension}"
        path.write_bytes(content)
        raw, error = try_loading(path)
    assert (raw is None) != (error is None)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
