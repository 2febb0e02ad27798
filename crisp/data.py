"""Data sets: where the sentences come from, checking them, and the tokenisation cache.

A task's data comes from one of three sources, chosen by its TASK SPEC's `name` (see crisp.tasks):
  - a Hugging Face Hub data set. How a name splits into load_dataset's path and config:
        "glue/sst2", "super_glue/boolq"   -> path nyu-mll/glue (GLUE's Hub repository) / super_glue,
                                             config sst2 / boolq (data sets with several configs)
        "namespace/name" (stanfordnlp/sst2) -> path namespace/name, no config
        "namespace/name/config"             -> path namespace/name, config config
        "name" (imdb)                       -> path name, no config
    Only the spec's train_split and validation_split are used (GLUE's test labels are hidden).
    With a `revision` (in the pipeline: the commit its fetch job recorded, crisp.fetch) the data set
    is read from that snapshot in the Hugging Face cache, without a request.
  - "local": train_file and validation_file in .tsv, .csv, .jsonl or .parquet, each with a header
    naming its columns. Text files are UTF-8 (a byte-order mark is allowed; UTF-16 with one too),
    with LF or CRLF line ends; blank lines are skipped. .tsv is read without quote handling, as
    GLUE writes it (SST-2's train.tsv / dev.tsv load as they are), .csv with the usual
    double-quote rules. Labels are 0..K-1 or label names (any case). crisp.tabular reads and
    checks them.
  - "synthetic": generated English reviews (crisp.synthetic), for offline runs and tests; with
    `synthetic.pairs` a sentence-pair task (does the second review agree with the first?).

Every source is normalised to a DatasetDict with splits "train" and "validation" and columns
"text" (str), "text_pair" (str, pair tasks only) and "label" (ClassLabel with the task's label
names). `prepare` tokenises once (pairs with the tokenizer's pair template) and saves the result
in Arrow format with a stats.json, written last, that marks the folder complete; training reads
it back with `load_prepared` and pads each batch with `collator`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from unittest import mock

import datasets
import huggingface_hub.constants
import numpy as np
import pandas as pd
import transformers
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from crisp.errors import ConfigError, DataError
from crisp.modeling import MODEL_OFFLINE_VARIABLES, load_tokenizer, require_hub
from crisp.synthetic import PAIR_LABEL_NAMES, generate_synthetic, generate_synthetic_pairs
from crisp.tabular import normalise_frame, read_local_split
from crisp.tasks import hub_dataset, resolve_task

SPLITS = ("train", "validation")
DEFAULT_LABEL_NAMES = ("negative", "positive")
STATS_FILE = "stats.json"
DATASET_OFFLINE_VARIABLES = ("HF_DATASETS_OFFLINE", *MODEL_OFFLINE_VARIABLES)
OFFLINE_DATASET_HINT = (
    "To run without the Hub, use one of:\n"
    "  - local files (GLUE's SST-2 train.tsv and dev.tsv load as they are):\n"
    "        tasks: {sst2: {name: local, train_file: /path/train.tsv, validation_file: /path/dev.tsv}}\n"
    "  - generated sentences:  tasks: {demo: {name: synthetic}}\n"
    "  - the offline demo:     snakemake --cores all --configfile config/demo.yaml\n"
    "or download the data set once where the Hub is reachable; it is then read from the cache."
)


def hub_path(name: str) -> tuple[str, str | None]:
    """load_dataset's (path, config) for a Hub data set name (crisp.tasks.hub_dataset has the rule)."""
    return hub_dataset(name)


# --- Loading and checking ------------------------------------------------------------------


def load_raw_dataset(task_spec: dict) -> datasets.DatasetDict:
    """Load, check and cap a task's data (a TASK SPEC, or a partial one that resolve_task completes).

    Returns splits "train" and "validation" with columns "text", "text_pair" (pair tasks) and
    "label"; the label names are in `dataset["train"].features["label"].names`.
    """
    spec = resolve_task(task_spec)
    name = spec["name"]
    if name == "synthetic":
        frames, label_names = _synthetic_frames(spec)
    elif name == "local":
        label_names = list(spec.get("label_names") or DEFAULT_LABEL_NAMES)
        frames = {split: read_local_split(spec, split, label_names) for split in SPLITS}
    else:
        frames, label_names = _load_hub_dataset(spec)

    sources = _split_sources(spec)
    _check_classes(frames, label_names, sources)  # before sampling, so row numbers are the files'
    caps = {"train": spec["max_train_examples"], "validation": spec["max_validation_examples"]}
    frames = {split: sample_rows(frame, caps[split], spec["seed"]) for split, frame in frames.items()}
    _require_two_classes(
        frames["train"], label_names, sources["train"] + f", after sampling max_train_examples = {caps['train']} rows"
    )

    columns = {"text": datasets.Value("string")}
    if spec["text_pair_column"] is not None:
        columns["text_pair"] = datasets.Value("string")
    features = datasets.Features({**columns, "label": datasets.ClassLabel(names=label_names)})
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_pandas(frame, features=features, preserve_index=False)
            for split, frame in frames.items()
        }
    )


def sample_rows(frame: pd.DataFrame, cap: int | None, seed: int) -> pd.DataFrame:
    """A seeded random sample of `cap` rows, kept in file order; all rows when cap is None."""
    if cap is not None and cap < 1:
        raise ValueError(f"An example cap must be at least 1, got {cap}")
    if cap is None or cap >= len(frame):
        return frame.reset_index(drop=True)
    chosen = np.sort(np.random.default_rng(seed).choice(len(frame), size=cap, replace=False))
    return frame.iloc[chosen].reset_index(drop=True)


def _split_sources(spec: dict) -> dict[str, str]:
    if spec["name"] == "local":
        return {split: str(Path(spec[f"{split}_file"]).expanduser()) for split in SPLITS}
    if spec["name"] == "synthetic":
        return {split: f"synthetic data ({split} split)" for split in SPLITS}
    return {split: f"Hub data set {spec['name']} ({spec[f'{split}_split']} split)" for split in SPLITS}


def _check_classes(frames: dict[str, pd.DataFrame], label_names: list[str], sources: dict[str, str]) -> None:
    _require_two_classes(frames["train"], label_names, sources["train"])
    unseen = ~frames["validation"]["label"].isin(frames["train"]["label"].unique()).to_numpy()
    if unseen.any():
        first = int(np.argmax(unseen))
        raise DataError(
            f"{sources['validation']}: data row {first + 1} has label "
            f"{frames['validation']['label'].iloc[first]}, which never occurs in the training "
            "data, so the model cannot learn it. Check that both files use the same labels."
        )


def _require_two_classes(train: pd.DataFrame, label_names: list[str], source: str) -> None:
    present = train["label"].unique().tolist()
    if len(present) < 2:
        raise DataError(
            f"{source}: every training example has the same label, {present[0]} "
            f"({label_names[present[0]]}). A classifier needs examples of at least two "
            "classes; check the data, or raise max_train_examples."
        )


# --- Hub data sets -------------------------------------------------------------------------


def _load_hub_dataset(spec: dict) -> tuple[dict[str, pd.DataFrame], list[str]]:
    path, config_name = hub_path(spec["name"])
    what = f"Data set '{spec['name']}'"
    if spec.get("revision"):
        loaded = _load_hub_snapshot(path, config_name, spec["revision"], what)
    else:
        try:
            with _hub_offline():  # the cache first, without a single network request
                loaded = datasets.load_dataset(path, config_name)
        except (ConnectionError, FileNotFoundError):
            require_hub(what, OFFLINE_DATASET_HINT, DATASET_OFFLINE_VARIABLES)
            loaded = datasets.load_dataset(path, config_name)

    wanted = {split: spec[f"{split}_split"] for split in SPLITS}
    missing = [name for name in wanted.values() if name not in loaded]
    if missing:
        raise DataError(
            f"{what} has no split {', '.join(missing)} (it has {', '.join(loaded)}). "
            "Set the task's train_split / validation_split, or use `name: local` with your files."
        )
    label_feature = loaded[wanted["train"]].features.get(spec["label_column"])
    hub_names = list(label_feature.names) if isinstance(label_feature, datasets.ClassLabel) else None
    label_names = list(spec.get("label_names") or hub_names or DEFAULT_LABEL_NAMES)
    if hub_names is not None and len(hub_names) != len(label_names):
        raise DataError(
            f"{what}: label_names has {len(label_names)} names ({', '.join(label_names)}) but the "
            f"data set has {len(hub_names)} labels ({', '.join(hub_names)}). Fix or remove label_names."
        )
    frames = {}
    for split, hub_split in wanted.items():
        frames[split] = normalise_frame(
            loaded[hub_split].to_pandas(),
            f"{what} ({hub_split} split)",
            lambda i: f"row {i + 1}",
            spec["text_column"],
            spec["label_column"],
            label_names,
            text_pair_column=spec["text_pair_column"],
            labels_are_indices=hub_names is not None,
        )
    return frames, label_names


def _load_hub_snapshot(repository: str, config_name: str | None, revision: str, what: str) -> datasets.DatasetDict:
    """One revision of a Hub data set, from the Hugging Face cache where its fetch put it, without a
    request: datasets reads the snapshot's parquet files through its README's `configs:` block
    (load_dataset("<repository>") offline would look only in datasets' own prepared cache)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(repository, repo_type="dataset", revision=revision, local_files_only=True)
    except LocalEntryNotFoundError:
        raise DataError(
            f"{what} ({repository}) at revision {revision} is not in the Hugging Face cache "
            f"({huggingface_hub.constants.HF_HUB_CACHE}): fetch it first (`snakemake --until fetch`, or "
            "`crisp fetch --config <config.yaml>` where the Hub can be reached)"
        ) from None
    return datasets.load_dataset(folder, config_name)


@contextlib.contextmanager
def _hub_offline():
    """datasets' own offline mode, switched on for one call: it reads its cache and nothing else."""
    with (
        mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True),
        mock.patch.object(huggingface_hub.constants, "HF_HUB_OFFLINE", True),
    ):
        yield


# --- Synthetic reviews (crisp.synthetic generates them) ------------------------------------


def _synthetic_frames(spec: dict) -> tuple[dict[str, pd.DataFrame], list[str]]:
    settings = spec["synthetic"]
    pairs = bool(settings.get("pairs"))
    generate = generate_synthetic_pairs if pairs else generate_synthetic
    label_names = list(spec.get("label_names") or (PAIR_LABEL_NAMES if pairs else DEFAULT_LABEL_NAMES))
    if len(label_names) != 2:
        raise ConfigError(f"config key 'label_names': synthetic data has two labels, got {label_names}")
    frames = {
        split: generate(settings[f"{split}_size"], spec["seed"], settings["label_noise"], split) for split in SPLITS
    }
    if spec["text_pair_column"] is None:  # pairs generated but read as single sentences: not asked for
        frames = {split: frame.drop(columns="text_pair", errors="ignore") for split, frame in frames.items()}
    elif not pairs:
        raise ConfigError("config key 'text_pair_column': synthetic data has pairs only with synthetic.pairs: true")
    return frames, label_names


# --- Tokenisation cache --------------------------------------------------------------------
#
# The cache folder is complete exactly when its stats.json exists: prepare writes everything to
# a hidden sibling folder, stats.json last, and renames it into place, so a run killed at any
# moment leaves either the old complete folder, or none, and never one that load_prepared reads.


def prepare(task_spec: dict, tokenizer_spec: str, max_length: int, out_dir: str | Path, force: bool = False,
            tokenizer_revision: str | None = None) -> Path:
    """Tokenise a task's data once and save it to out_dir (Arrow) with out_dir/stats.json.

    A folder already prepared with the same settings is reused unless force is set. A Hub data set
    is read at the spec's `revision` and a Hub tokenizer at tokenizer_revision (the commits their
    fetch records name); stats.json records both.
    """
    out_dir = Path(out_dir)
    spec = resolve_task(task_spec)
    settings = _prepare_settings(spec, tokenizer_spec, max_length)
    settings["tokenizer_revision"] = tokenizer_revision
    if not force and _prepared_settings(out_dir) == settings:
        return out_dir

    tokenizer = load_tokenizer(tokenizer_spec, revision=tokenizer_revision)
    model_limit = tokenizer.model_max_length
    if not 8 <= max_length <= model_limit:
        raise ConfigError(
            f"config key 'max_length': {max_length}; it must be between 8 and {model_limit} "
            f"(what the tokenizer of '{tokenizer_spec}' supports)."
        )
    raw = load_raw_dataset(spec)
    tokenized = tokenize(raw, tokenizer, max_length)
    stats = {
        **settings,
        "label_names": raw["train"].features["label"].names,
        "metric": spec["metric"],
        "pair": spec["text_pair_column"] is not None,
        "sizes": {split: len(tokenized[split]) for split in tokenized},
        "splits": {split: _split_stats(tokenized[split], max_length) for split in tokenized},
        "versions": {"datasets": datasets.__version__, "transformers": transformers.__version__},
    }
    tokenized = tokenized.remove_columns("num_tokens")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out_dir)
    partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    try:
        tokenized.save_to_disk(str(partial))
        (partial / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")  # last: marks it complete
    except BaseException:  # also Ctrl-C: leave no half-written folder behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out_dir.exists():  # moved aside in one step, so a kill here leaves no half-deleted cache
        out_dir.rename(out_dir.parent / f".{out_dir.name}.old-{os.getpid()}")
    partial.rename(out_dir)
    _remove_leftovers(out_dir)
    return out_dir


def _remove_leftovers(out_dir: Path) -> None:
    """Hidden folders of an earlier prepare of out_dir that was killed (SIGKILL skips all cleanup)."""
    for leftover in [
        *out_dir.parent.glob(f".{out_dir.name}.partial-*"),
        *out_dir.parent.glob(f".{out_dir.name}.old-*"),
    ]:
        shutil.rmtree(leftover, ignore_errors=True)


def tokenize(raw: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int) -> datasets.DatasetDict:
    """Columns text (+ text_pair), labels, input_ids, attention_mask (+ token_type_ids for pairs, when
    the tokenizer makes them), truncated, not padded, and num_tokens (the length before truncation).

    Pairs go through the tokenizer's own pair template ([CLS] a [SEP] b [SEP] for BERT); when too
    long, the longer of the two is shortened first.
    """
    pair = "text_pair" in raw["train"].column_names
    kept = ("input_ids", "attention_mask", "token_type_ids") if pair else ("input_ids", "attention_mask")

    def encode(batch: dict) -> dict:
        texts = {"text": batch["text"], "text_pair": batch["text_pair"]} if pair else {"text": batch["text"]}
        encoded = tokenizer(**texts, truncation="longest_first", max_length=max_length)
        full_lengths = [len(ids) for ids in tokenizer(**texts, verbose=False)["input_ids"]]
        return {**{key: encoded[key] for key in kept if key in encoded}, "num_tokens": full_lengths}

    tokenized = raw.map(encode, batched=True, batch_size=1000, desc="Tokenising")
    return tokenized.rename_column("label", "labels")


def _split_stats(split: datasets.Dataset, max_length: int) -> dict:
    lengths = np.asarray(split["num_tokens"])
    names = split.features["labels"].names
    counts = np.bincount(np.asarray(split["labels"]), minlength=len(names))
    return {
        "examples": len(split),
        "label_counts": {name: int(count) for name, count in zip(names, counts)},
        # token lengths before truncation, special tokens included (both sentences for pairs)
        "token_length": {
            "mean": round(float(lengths.mean()), 2),
            "median": float(np.median(lengths)),
            "p95": float(np.percentile(lengths, 95)),
            "max": int(lengths.max()),
        },
        "truncated_fraction": round(float((lengths > max_length).mean()), 6),
    }


def _prepare_settings(spec: dict, tokenizer_spec: str, max_length: int) -> dict:
    settings = {"dataset": spec, "tokenizer": tokenizer_spec, "max_length": max_length}
    if spec["name"] == "local":
        # A changed file must not be served from an old cache.
        settings["file_sha256"] = {
            split: _sha256(Path(spec[f"{split}_file"]).expanduser())
            for split in SPLITS
            if spec.get(f"{split}_file") and Path(spec[f"{split}_file"]).expanduser().is_file()
        }
    return json.loads(json.dumps(settings))  # the form it takes in stats.json


def _prepared_settings(out_dir: Path) -> dict | None:
    try:
        stats = read_stats(out_dir)
    except (FileNotFoundError, DataError):
        return None
    keys = ("dataset", "tokenizer", "max_length", "file_sha256")
    prepared = {key: stats.get(key) for key in keys if key in stats}
    return {**prepared, "tokenizer_revision": stats.get("tokenizer_revision")}


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_stats(prepared_dir: str | Path) -> dict:
    """stats.json of a complete prepared folder (raises FileNotFoundError / DataError otherwise)."""
    prepared_dir = Path(prepared_dir)
    if not prepared_dir.is_dir():
        raise FileNotFoundError(
            f"No prepared data in '{prepared_dir}'. Run `crisp data` (or the pipeline's data rule) first."
        )
    path = prepared_dir / STATS_FILE
    if not path.is_file():
        raise DataError(
            f"'{prepared_dir}' is not a complete prepared data set: {STATS_FILE}, which is written "
            "last, is missing (an earlier `crisp data` was interrupted, or the folder was copied "
            "only in part). Run `crisp data` (or the pipeline's data rule) again: it rebuilds the folder."
        )
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as error:
        raise DataError(f"'{path}' cannot be read ({error}). Run `crisp data` again to rebuild the folder.") from error


def load_prepared(prepared_dir: str | Path) -> datasets.DatasetDict:
    """The tokenised splits written by `prepare`; refuses a folder without its completion marker."""
    read_stats(prepared_dir)
    try:
        return datasets.load_from_disk(str(prepared_dir))
    except (FileNotFoundError, ValueError, OSError) as error:
        raise DataError(f"'{prepared_dir}' holds damaged prepared data ({error}). Run `crisp data` again.") from error


def collator(tokenizer: PreTrainedTokenizerBase) -> DataCollatorWithPadding:
    """Pads each batch to its longest sequence (the cache itself is unpadded).

    It pads every feature it is given, so drop the "text" and "text_pair" columns first (Trainer
    does this itself for columns the model's forward does not take).
    """
    return DataCollatorWithPadding(tokenizer)
