"""Data sets: where the sentences come from, checking them, and the tokenisation cache.

Three sources, chosen by `dataset.name` in the config:
  - a Hugging Face Hub data set, "path" or "path/config" (glue/sst2 -> load_dataset("glue", "sst2"));
    only the train and validation splits are used (SST-2's test labels are hidden);
  - "local": train_file and validation_file in .tsv, .csv, .jsonl or .parquet, each with a header
    naming its columns; .tsv is read without quote handling, as GLUE writes it (SST-2's
    train.tsv / dev.tsv load as they are), .csv with the usual double-quote rules;
  - "synthetic": generated English sentiment sentences, for offline runs and tests.

Every source is normalised to a DatasetDict with splits "train" and "validation" and columns
"text" (str) and "label" (ClassLabel, 0 = negative, 1 = positive by default). `prepare` tokenises
once and saves the result in Arrow format with a stats.json beside it; training reads it back
with `load_prepared` and pads each batch with `collator`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Callable
from unittest import mock

import datasets
import huggingface_hub.constants
import numpy as np
import pandas as pd
import transformers
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from crisp.config import merge, schema_defaults
from crisp.errors import ConfigError, DataError
from crisp.modeling import MODEL_OFFLINE_VARIABLES, load_tokenizer, require_hub

SPLITS = ("train", "validation")
DEFAULT_LABEL_NAMES = ("negative", "positive")
SUPPORTED_EXTENSIONS = (".tsv", ".csv", ".jsonl", ".parquet")
STATS_FILE = "stats.json"


DATASET_OFFLINE_VARIABLES = ("HF_DATASETS_OFFLINE", *MODEL_OFFLINE_VARIABLES)
OFFLINE_DATASET_HINT = (
    "To run without the Hub, use one of:\n"
    "  - local files (GLUE's SST-2 train.tsv and dev.tsv load as they are):\n"
    "        dataset: {name: local, train_file: /path/train.tsv, validation_file: /path/dev.tsv}\n"
    "  - generated sentences:  dataset: {name: synthetic}\n"
    "  - the offline demo:     snakemake --cores all --configfile config/demo.yaml\n"
    "or download the data set once where the Hub is reachable; it is then read from the cache."
)


def resolve_dataset_config(dataset_cfg: dict) -> dict:
    """The `dataset:` section with the schema's defaults filled in (for partial sections)."""
    return merge(schema_defaults("dataset"), dataset_cfg or {})


def dataset_slug(dataset_cfg: dict) -> str:
    """A filesystem-safe name: glue-sst2, synthetic, local-train-1a2b3c4d."""
    cfg = resolve_dataset_config(dataset_cfg)
    if cfg["name"] == "local":
        # Files of the same name in different folders must not share a cache.
        train_file = Path(str(cfg["train_file"])).expanduser().resolve()
        name = f"local-{train_file.stem}-{hashlib.sha1(str(train_file).encode()).hexdigest()[:8]}"
    else:
        name = cfg["name"].replace("/", "-")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


# --- Loading and checking ------------------------------------------------------------------

def load_raw_dataset(dataset_cfg: dict) -> datasets.DatasetDict:
    """Load, check and cap the configured data set.

    Returns splits "train" and "validation" with columns "text" and "label"; the label names are
    in `dataset["train"].features["label"].names`.
    """
    cfg = resolve_dataset_config(dataset_cfg)
    name = cfg["name"]
    if name == "synthetic":
        frames = {split: generate_synthetic(cfg["synthetic"][f"{split}_size"], cfg["seed"],
                                            cfg["synthetic"]["label_noise"], split) for split in SPLITS}
        label_names = list(DEFAULT_LABEL_NAMES)
    elif name == "local":
        label_names = list(cfg.get("label_names") or DEFAULT_LABEL_NAMES)
        frames = {split: _read_local_split(cfg, split, label_names) for split in SPLITS}
    else:
        frames, label_names = _load_hub_dataset(cfg)

    sources = _split_sources(cfg)
    _check_classes(frames, label_names, sources)  # before sampling, so row numbers are the files'
    caps = {"train": cfg["max_train_examples"], "validation": cfg["max_validation_examples"]}
    frames = {split: sample_rows(frame, caps[split], cfg["seed"]) for split, frame in frames.items()}
    _require_two_classes(frames["train"], label_names, sources["train"] + ", after sampling "
                         f"dataset.max_train_examples = {caps['train']} rows")

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=label_names)})
    return datasets.DatasetDict({
        split: datasets.Dataset.from_pandas(frame, features=features, preserve_index=False)
        for split, frame in frames.items()
    })


def sample_rows(frame: pd.DataFrame, cap: int | None, seed: int) -> pd.DataFrame:
    """A seeded random sample of `cap` rows, kept in file order; all rows when cap is None."""
    if cap is not None and cap < 1:
        raise ValueError(f"An example cap must be at least 1, got {cap}")
    if cap is None or cap >= len(frame):
        return frame.reset_index(drop=True)
    chosen = np.sort(np.random.default_rng(seed).choice(len(frame), size=cap, replace=False))
    return frame.iloc[chosen].reset_index(drop=True)


def _split_sources(cfg: dict) -> dict[str, str]:
    if cfg["name"] == "local":
        return {split: str(Path(cfg[f"{split}_file"]).expanduser()) for split in SPLITS}
    if cfg["name"] == "synthetic":
        return {split: f"synthetic data ({split} split)" for split in SPLITS}
    return {split: f"Hub data set {cfg['name']} ({split} split)" for split in SPLITS}


def _read_local_split(cfg: dict, split: str, label_names: list[str]) -> pd.DataFrame:
    key = f"{split}_file"
    if not cfg.get(key):
        raise DataError(f"dataset.name is 'local' but dataset.{key} is not set: give the path of the "
                        f"{split} file (.tsv, .csv, .jsonl or .parquet).")
    path = Path(cfg[key]).expanduser()
    frame, describe_row = read_table(path)
    return normalise_frame(frame, str(path), describe_row, cfg["text_column"], cfg["label_column"], label_names)


def read_table(path: Path) -> tuple[pd.DataFrame, Callable[[int], str]]:
    """Read a data file; also return how to name its i-th data row (0-based) in messages."""
    if not path.is_file():
        raise DataError(f"Data file '{path}' does not exist. Check dataset.train_file / "
                        "dataset.validation_file (relative paths start from the working directory).")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise DataError(f"Data file '{path}' has extension '{suffix}'; supported are "
                        f"{', '.join(SUPPORTED_EXTENSIONS)}. Convert it or rename it if it is one of them.")
    try:
        if suffix == ".jsonl":
            return _read_jsonl(path)
        if suffix == ".parquet":
            return pd.read_parquet(path), lambda i: f"row {i + 1}"
        # Everything as text, and no "NA"/"null" guessing: a sentence may well be "null".
        # GLUE's TSVs are unquoted, and their sentences contain quote characters.
        # header=None makes pandas reject a line with more fields than the header (a tab inside
        # a sentence) instead of quietly dropping the extra fields.
        rows = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", header=None, dtype=str,
                           keep_default_na=False, quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL)
        frame = rows.iloc[1:].set_axis(rows.iloc[0].tolist(), axis="columns").reset_index(drop=True)
        return frame, lambda i: f"data row {i + 1} (line {i + 2} of the file, after the header)"
    except DataError:
        raise
    except UnicodeDecodeError as error:
        raise DataError(f"Data file '{path}' is not UTF-8 text ({error}). Save it as UTF-8.") from error
    except (pd.errors.ParserError, ValueError, OSError) as error:
        tab_hint = " (a tab inside a sentence splits it in two)" if suffix == ".tsv" else ""
        raise DataError(f"Data file '{path}' could not be read as {suffix[1:]}: {str(error).strip()}. "
                        f"Check that every line has as many fields as the header{tab_hint}.") from error


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, Callable[[int], str]]:
    records, line_numbers = [], []
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}: line {line_number} is not valid JSON ({error.msg}). "
                                "Each line must be one JSON object.") from error
            if not isinstance(record, dict):
                raise DataError(f"{path}: line {line_number} is a JSON {type(record).__name__}, "
                                "not an object like {\"sentence\": ..., \"label\": ...}.")
            records.append(record)
            line_numbers.append(line_number)
    return pd.DataFrame.from_records(records), lambda i: f"line {line_numbers[i]}"


def normalise_frame(frame: pd.DataFrame, source: str, describe_row: Callable[[int], str],
                    text_column: str, label_column: str, label_names: list[str]) -> pd.DataFrame:
    """Check one split and return it as columns text (str) and label (int in 0..len(label_names)-1).

    Labels may be integers (also "1" or 1.0) or label names ("positive"). Checks are vectorised:
    SST-2's 67k rows take a fraction of a second.
    """
    for role, column in (("text_column", text_column), ("label_column", label_column)):
        if column not in frame.columns:
            raise DataError(f"{source}: no column '{column}' (dataset.{role}). Columns found: "
                            f"{', '.join(map(str, frame.columns)) or 'none'}. Set dataset.{role} "
                            "to the right one, or add a header line if the file has none.")
    if frame.empty:
        raise DataError(f"{source}: has no data rows.")

    text = frame[text_column]
    bad_text = ~text.map(lambda value: isinstance(value, str) and bool(value.strip())).to_numpy(dtype=bool)
    if bad_text.any():
        first = int(np.argmax(bad_text))
        raise DataError(f"{source}: {describe_row(first)} has an empty or missing text in column "
                        f"'{text_column}' ({int(bad_text.sum())} such rows in all). "
                        "Remove or fill in those rows.")

    raw_labels = frame[label_column]
    as_text = raw_labels.astype("string").str.strip()
    numbers = pd.to_numeric(as_text, errors="coerce")
    by_name = as_text.str.lower().map({name.lower(): i for i, name in enumerate(label_names)})
    labels = numbers.fillna(by_name.astype("float64")).to_numpy(dtype="float64", na_value=np.nan)
    allowed = np.arange(len(label_names))
    bad_label = ~np.isin(labels, allowed)  # NaN, fractions and out-of-range values all fail
    if bad_label.any():
        first = int(np.argmax(bad_label))
        value = raw_labels.iloc[first]
        value = value.item() if isinstance(value, np.generic) else value  # 7, not np.int64(7)
        raise DataError(f"{source}: {describe_row(first)} has label {value!r} in column "
                        f"'{label_column}', which is not one of the allowed labels "
                        f"{_describe_labels(label_names)} ({int(bad_label.sum())} such rows in all). "
                        "Fix those rows, or set dataset.label_column to the column with the labels.")

    return pd.DataFrame({"text": text.to_numpy(dtype=object), "label": labels.astype("int64")})


def _describe_labels(label_names: list[str]) -> str:
    return ", ".join(f"{i} ({name})" for i, name in enumerate(label_names))


def _check_classes(frames: dict[str, pd.DataFrame], label_names: list[str], sources: dict[str, str]) -> None:
    _require_two_classes(frames["train"], label_names, sources["train"])
    unseen = ~frames["validation"]["label"].isin(frames["train"]["label"].unique()).to_numpy()
    if unseen.any():
        first = int(np.argmax(unseen))
        raise DataError(f"{sources['validation']}: data row {first + 1} has label "
                        f"{frames['validation']['label'].iloc[first]}, which never occurs in the training "
                        "data, so the model cannot learn it. Check that both files use the same labels.")


def _require_two_classes(train: pd.DataFrame, label_names: list[str], source: str) -> None:
    present = train["label"].unique().tolist()
    if len(present) < 2:
        raise DataError(f"{source}: every training example has the same label, {present[0]} "
                        f"({label_names[present[0]]}). A classifier needs examples of at least two "
                        "classes; check the data, or raise dataset.max_train_examples.")


def _load_hub_dataset(cfg: dict) -> tuple[dict[str, pd.DataFrame], list[str]]:
    # "glue/sst2" is path "glue" with config "sst2"; "namespace/name/config" is also accepted.
    parts = cfg["name"].split("/")
    path, config_name = ("/".join(parts[:-1]), parts[-1]) if len(parts) > 1 else (parts[0], None)
    what = f"Data set '{cfg['name']}'"
    try:
        with _hub_offline():  # the cache first, without a single network request
            loaded = datasets.load_dataset(path, config_name)
    except (ConnectionError, FileNotFoundError):
        require_hub(what, OFFLINE_DATASET_HINT, DATASET_OFFLINE_VARIABLES)
        loaded = datasets.load_dataset(path, config_name)

    missing = [split for split in SPLITS if split not in loaded]
    if missing:
        raise DataError(f"{what} has no split {', '.join(missing)} (it has {', '.join(loaded)}). "
                        "Use a data set with train and validation splits, or `name: local` with your files.")
    label_feature = loaded["train"].features.get(cfg["label_column"])
    label_names = (list(label_feature.names) if isinstance(label_feature, datasets.ClassLabel)
                   else list(cfg.get("label_names") or DEFAULT_LABEL_NAMES))
    frames = {}
    for split in SPLITS:
        frame = loaded[split].to_pandas()
        frames[split] = normalise_frame(frame, f"{what} ({split} split)", lambda i: f"row {i + 1}",
                                        cfg["text_column"], cfg["label_column"], label_names)
    return frames, label_names


@contextlib.contextmanager
def _hub_offline():
    """datasets' own offline mode, switched on for one call: it reads its cache and nothing else."""
    with mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True), \
            mock.patch.object(huggingface_hub.constants, "HF_HUB_OFFLINE", True):
        yield


# --- Synthetic sentiment sentences ---------------------------------------------------------
#
# Built so that word counts alone cannot solve it: negation flips an adjective ("not good"),
# and in "X, but Y" / "although X, Y" the second clause decides, while X usually carries the
# opposite sentiment with the same kind of words. Label noise adds a floor no model can pass.

POSITIVE_WORDS = ["good", "great", "wonderful", "delightful", "charming", "moving", "brilliant", "funny",
                  "engaging", "beautiful", "clever", "gripping", "touching", "superb", "memorable",
                  "enjoyable", "fresh", "thoughtful", "powerful", "entertaining"]
NEGATIVE_WORDS = ["bad", "dull", "boring", "tedious", "clumsy", "awful", "bland", "predictable", "messy",
                  "lifeless", "forgettable", "shallow", "tiresome", "painful", "weak", "flat", "pointless",
                  "silly", "sloppy", "uninspired"]
INTENSIFIERS = ["very", "extremely", "really", "incredibly", "truly", "remarkably", "quite", "so"]
SUBJECTS = {  # subject -> is it plural
    "the movie": False, "the film": False, "this picture": False, "the story": False, "the plot": False,
    "the script": False, "the acting": False, "the cast": False, "the dialogue": False,
    "the soundtrack": False, "the ending": False, "the direction": False, "the humor": False,
    "the pacing": False, "the lead actor": False, "the final act": False, "the performances": True,
    "the characters": True, "the jokes": True, "the visuals": True,
}
# (affirmative, negated forms) for singular and plural subjects
LINKING_VERBS = {
    False: [("is", ["is not", "isn't", "is never"]), ("was", ["was not", "wasn't", "was never"]),
            ("feels", ["does not feel", "doesn't feel", "never feels"]), ("seems", ["does not seem"])],
    True: [("are", ["are not", "aren't", "are never"]), ("were", ["were not", "weren't"]),
           ("feel", ["do not feel", "don't feel", "never feel"]), ("seem", ["do not seem"])],
}
# (past tense, base form) of verbs a viewer uses about the film
POSITIVE_VERBS = [("loved", "love"), ("enjoyed", "enjoy"), ("liked", "like"), ("admired", "admire"),
                  ("adored", "adore")]
NEGATIVE_VERBS = [("hated", "hate"), ("disliked", "dislike"), ("resented", "resent"), ("loathed", "loathe")]
OPENERS = ["honestly, ", "overall, ", "in the end, ", "to be fair, ", "frankly, "]


def generate_synthetic(size: int, seed: int, label_noise: float = 0.0, split: str = "train") -> pd.DataFrame:
    """`size` sentiment sentences with columns text and label (0 negative, 1 positive).

    The same (seed, split) always gives the same sentences; label noise is drawn from its own
    stream, so changing it flips labels without changing the texts.
    """
    if not 0.0 <= label_noise < 0.5:
        raise ValueError(f"dataset.synthetic.label_noise must be in [0, 0.5), got {label_noise}")
    # String seeds are hashed with SHA-512 by `random`, so they are stable across processes.
    texts_rng = random.Random(f"crisp-synthetic-text:{seed}:{split}")
    noise_rng = random.Random(f"crisp-synthetic-noise:{seed}:{split}")
    texts, labels = [], []
    for _ in range(size):
        label = texts_rng.randint(0, 1)
        texts.append(_synthetic_sentence(texts_rng, positive=bool(label)))
        labels.append(1 - label if noise_rng.random() < label_noise else label)
    return pd.DataFrame({"text": texts, "label": labels})


def _synthetic_sentence(rng: random.Random, positive: bool) -> str:
    shape = rng.random()
    if shape < 0.35:
        body = _clause(rng, positive)
    elif shape < 0.65:
        first = _clause(rng, positive if rng.random() < 0.2 else not positive)
        body = f"{first}, but {_clause(rng, positive)}"
    elif shape < 0.8:
        conjunction = rng.choice(["although", "even though", "while"])
        body = f"{conjunction} {_clause(rng, not positive)}, {_clause(rng, positive)}"
    else:
        subject = rng.choice(list(SUBJECTS))
        verb = rng.choice(LINKING_VERBS[SUBJECTS[subject]])[0]
        first, second = rng.sample(POSITIVE_WORDS if positive else NEGATIVE_WORDS, 2)
        body = f"{subject} {verb} {_intensify(rng, first)} and {second}"
    opener = rng.choice(OPENERS) if rng.random() < 0.25 else ""
    return opener + body + rng.choice([" .", " .", " !", ""])


def _clause(rng: random.Random, positive: bool) -> str:
    negated = rng.random() < 0.35
    if rng.random() < 0.25:  # the viewer speaks: "i loved the plot" / "i did not enjoy the plot"
        verbs = POSITIVE_VERBS if positive != negated else NEGATIVE_VERBS
        past, base = rng.choice(verbs)
        verb = rng.choice([f"did not {base}", f"didn't {base}"]) if negated else past
        return f"i {verb} {rng.choice(list(SUBJECTS))}"
    subject = rng.choice(list(SUBJECTS))
    affirmative, negations = rng.choice(LINKING_VERBS[SUBJECTS[subject]])
    # A negated adjective carries the opposite sentiment: "not good" is negative.
    words = POSITIVE_WORDS if positive != negated else NEGATIVE_WORDS
    verb = rng.choice(negations) if negated else affirmative
    return f"{subject} {verb} {_intensify(rng, rng.choice(words))}"


def _intensify(rng: random.Random, adjective: str) -> str:
    return f"{rng.choice(INTENSIFIERS)} {adjective}" if rng.random() < 0.3 else adjective


# --- Tokenisation cache --------------------------------------------------------------------

def prepare(dataset_cfg: dict, tokenizer_spec: str, max_length: int, out_dir: str | Path,
            force: bool = False) -> Path:
    """Tokenise the data set once and save it to out_dir (Arrow) with out_dir/stats.json.

    A folder already prepared with the same settings is reused unless force is set. The data is
    written to a sibling folder first and renamed into place when complete, so an interrupted
    run never leaves a folder that looks prepared.
    """
    out_dir = Path(out_dir)
    cfg = resolve_dataset_config(dataset_cfg)
    settings = _prepare_settings(cfg, tokenizer_spec, max_length)
    if not force and _prepared_settings(out_dir) == settings:
        return out_dir

    tokenizer = load_tokenizer(tokenizer_spec)
    model_limit = tokenizer.model_max_length
    if not 8 <= max_length <= model_limit:
        raise ConfigError(f"config key 'max_length': {max_length}; it must be between 8 and {model_limit} "
                          f"(what the tokenizer of '{tokenizer_spec}' supports).")
    raw = load_raw_dataset(cfg)
    tokenized = tokenize(raw, tokenizer, max_length)
    stats = {**settings, "label_names": raw["train"].features["label"].names,
             "splits": {split: _split_stats(tokenized[split], max_length) for split in tokenized},
             "versions": {"datasets": datasets.__version__, "transformers": transformers.__version__}}
    tokenized = tokenized.remove_columns("num_tokens")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        tokenized.save_to_disk(str(partial))
        (partial / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")  # last: marks it complete
    except BaseException:  # also Ctrl-C: leave no half-written folder behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir


def tokenize(raw: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int) -> datasets.DatasetDict:
    """Columns text, labels, input_ids, attention_mask (truncated, not padded) and num_tokens
    (the length before truncation)."""

    def encode(batch: dict) -> dict:
        encoded = tokenizer(batch["text"], truncation=True, max_length=max_length)
        full_lengths = [len(ids) for ids in tokenizer(batch["text"], verbose=False)["input_ids"]]
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                "num_tokens": full_lengths}

    tokenized = raw.map(encode, batched=True, batch_size=1000, desc="Tokenising")
    return tokenized.rename_column("label", "labels")


def _split_stats(split: datasets.Dataset, max_length: int) -> dict:
    lengths = np.asarray(split["num_tokens"])
    names = split.features["labels"].names
    counts = np.bincount(np.asarray(split["labels"]), minlength=len(names))
    return {
        "examples": len(split),
        "label_counts": {name: int(count) for name, count in zip(names, counts)},
        # token lengths before truncation, special tokens included
        "token_length": {"mean": round(float(lengths.mean()), 2), "median": float(np.median(lengths)),
                         "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max())},
        "truncated_fraction": round(float((lengths > max_length).mean()), 6),
    }


def _prepare_settings(cfg: dict, tokenizer_spec: str, max_length: int) -> dict:
    settings = {"dataset": cfg, "tokenizer": tokenizer_spec, "max_length": max_length}
    if cfg["name"] == "local":
        # A changed file must not be served from an old cache.
        settings["file_sha256"] = {split: _sha256(Path(cfg[f"{split}_file"]).expanduser()) for split in SPLITS
                                   if cfg.get(f"{split}_file") and Path(cfg[f"{split}_file"]).expanduser().is_file()}
    return json.loads(json.dumps(settings))  # the form it takes in stats.json


def _prepared_settings(out_dir: Path) -> dict | None:
    stats = read_stats(out_dir) if (out_dir / STATS_FILE).is_file() else None
    if stats is None:
        return None
    return {key: stats.get(key) for key in ("dataset", "tokenizer", "max_length", "file_sha256") if key in stats}


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_stats(prepared_dir: str | Path) -> dict:
    path = Path(prepared_dir) / STATS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No prepared data in '{prepared_dir}' ({STATS_FILE} is missing). "
                                "Run `crisp prepare` (or the pipeline's prepare_data rule) first.")
    return json.loads(path.read_text())


def load_prepared(prepared_dir: str | Path) -> datasets.DatasetDict:
    """The tokenised splits written by `prepare`."""
    read_stats(prepared_dir)  # raises a clear error when the folder is missing or incomplete
    return datasets.load_from_disk(str(prepared_dir))


def collator(tokenizer: PreTrainedTokenizerBase) -> DataCollatorWithPadding:
    """Pads each batch to its longest sequence (the cache itself is unpadded).

    It pads every feature it is given, so drop the "text" column first (Trainer does this itself
    for columns the model's forward does not take).
    """
    return DataCollatorWithPadding(tokenizer)
