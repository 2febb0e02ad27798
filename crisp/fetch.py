"""Fetch: put one Hub model or Hub data set into the Hugging Face cache, and record what it resolved.

The fetch jobs are the only part of the pipeline that may use the network (a `localrule`: under
SLURM they run on the submitting host, where the network is). Every other job runs with the Hub
switched off (HF_HUB_OFFLINE=1) and loads exactly the commit its fetch record names.

    fetch/models/<model>.json                    a model: config, weights, tokenizer files
    fetch/datasets/<repository>--<config>.json   a data set: its README and one configuration's files

A record holds the id, the revision asked for (a pin, or null), the commit it resolved to, the
files and their sizes, and whether the files came from the cache or the Hub. The cache is tried
first, without a request: a cache filled on a login node (or by an earlier fetch) serves a compute
node or an air-gapped machine. Only what the cache lacks is downloaded, with huggingface_hub's
snapshot_download. When neither the cache nor the Hub has it, FetchError says in one line which id
and revision is missing and how to fetch it.

Imports huggingface_hub, not transformers or datasets: a fetch takes a second when it is cached.
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path

import yaml

from crisp.errors import FetchError

# What from_pretrained reads for a model, its tokenizer and its configuration (one weights format).
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model")
SAFETENSORS = ("model.safetensors", "model-*.safetensors", "model.safetensors.index.json")
PYTORCH_BIN = ("pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json")
README = "README.md"
RECORD_KEYS = ("kind", "id", "config", "requested_revision", "commit", "files", "source")
# Environment switches that forbid the download (the cache is still read).
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def fetch(settings: dict, out: str | Path) -> dict:
    """Fetch what `settings` (crisp.settings.fetch_settings) names and write its record to `out`."""
    kind, repo_id, config, revision = settings["kind"], settings["id"], settings.get("config"), settings["revision"]
    if kind not in ("model", "dataset"):
        raise FetchError(f"fetch settings: kind {kind!r} is neither 'model' nor 'dataset'")
    cached = _from_cache(kind, repo_id, config, revision)
    if cached is not None:
        folder, patterns = cached
        source = "cache"
    else:
        _require_hub(kind, repo_id, config, revision)
        folder, patterns = _download(kind, repo_id, config, revision)
        source = "hub"
    record = {
        "kind": kind,
        "id": repo_id,
        "config": config,
        "requested_revision": revision,
        "commit": Path(folder).name,
        "files": snapshot_files(folder, patterns),
        "source": source,
    }
    _write_json(Path(out), record)
    return record


# ------------------------------------------------------------------------------------------ the cache


def _snapshot(kind: str, repo_id: str, revision: str | None, **kwargs) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, repo_type=kind, revision=revision, **kwargs)


def _from_cache(kind: str, repo_id: str, config: str | None, revision: str | None):
    """(snapshot folder, patterns of the files used) when the cache holds everything; else None.
    Makes no request: local_files_only reads refs/ and snapshots/ only."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = _snapshot(kind, repo_id, revision, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        return None
    names = list(snapshot_files(folder, ["*"]))
    if kind == "model":
        patterns = model_patterns(names)
        # A snapshot that from_pretrained filled only in part (a configuration alone) is fetched again.
        complete = (
            "config.json" in names
            and any(_matches(name, SAFETENSORS + PYTORCH_BIN) for name in names)
            and any(name in TOKENIZER_FILES for name in names)
        )
    else:
        if README not in names:
            return None
        patterns = dataset_patterns((Path(folder) / README).read_text(encoding="utf-8"), config)
        complete = any(_matches(name, patterns) and name != README for name in names)
    return (folder, patterns) if complete else None


def model_patterns(repository_files) -> list[str]:
    """The files of a model repository from_pretrained needs: safetensors weights when there are any."""
    weights = SAFETENSORS if any(_matches(name, SAFETENSORS) for name in repository_files) else PYTORCH_BIN
    return [*MODEL_FILES, *weights]


def dataset_patterns(readme: str, config: str | None) -> list[str]:
    """A data set configuration's files, from the `configs:` block of its README (the Hub's parquet
    layout: `sst2/train-00000-of-00001.parquet` for GLUE), with the README itself. Without a
    configuration, or a README that does not list it, every file of the repository."""
    if config is None:
        return ["*"]
    for entry in readme_configs(readme):
        if entry.get("config_name") == config:
            data_files = entry.get("data_files") or []
            if isinstance(data_files, (str, dict)):
                data_files = [data_files]
            paths = []
            for item in data_files:
                path = item.get("path") if isinstance(item, dict) else item
                paths += [path] if isinstance(path, str) else list(path or [])
            return [README, *paths]
    return [README, f"{config}/*"]


def readme_configs(readme: str) -> list[dict]:
    """The `configs:` list of a data set card's YAML header (empty when there is none)."""
    if not readme.startswith("---"):
        return []
    header = readme[3:].split("\n---", 1)[0]
    try:
        card = yaml.safe_load(header) or {}
    except yaml.YAMLError:
        return []
    configs = card.get("configs") if isinstance(card, dict) else None
    return [entry for entry in configs or [] if isinstance(entry, dict)]


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def snapshot_files(folder: str | Path, patterns) -> dict[str, int]:
    """Relative path -> size in bytes of the snapshot's files that match `patterns` (the cache's
    snapshot entries are links into blobs/: the size is the blob's)."""
    folder = Path(folder)
    files = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and _matches(name, patterns):
            files[name] = path.stat().st_size
    return files


# ------------------------------------------------------------------------------------------ the Hub


def _require_hub(kind: str, repo_id: str, config: str | None, revision: str | None) -> None:
    from crisp.hub import hub_endpoint, hub_unreachable_reason

    reason = hub_unreachable_reason(OFFLINE_VARIABLES)
    if reason is None:
        return
    from huggingface_hub import constants

    what = f"{kind} {repo_id}" + (f" (configuration {config})" if config else "")
    raise FetchError(
        f"{what} at revision {revision or 'main'} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
        f"the Hub ({hub_endpoint()}) cannot be reached: {reason}. Fetch it where the Hub can be reached, into the "
        f"same cache (HF_HOME): `snakemake --until fetch` or `crisp fetch --config <config.yaml>`; or run "
        "without the Hub: --configfile config/demo.yaml (bundled:minilm, synthetic data)"
    )


def _download(kind: str, repo_id: str, config: str | None, revision: str | None) -> tuple[str, list[str]]:
    """Download the files that are needed at `revision`; the snapshot folder's name is the commit it
    resolved to. Asked for a branch or tag, huggingface_hub also writes refs/<revision>, so that a
    later fetch of the same revision is served from the cache."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    what = f"{kind} {repo_id}" + (f" (configuration {config})" if config else "")
    try:
        if kind == "model":
            info = HfApi().repo_info(repo_id, repo_type=kind, revision=revision)
            patterns = model_patterns([sibling.rfilename for sibling in info.siblings or []])
            # By commit: the files of exactly the commit whose listing chose them.
            folder = _snapshot(kind, repo_id, info.sha, allow_patterns=patterns)
            if revision is None or revision != info.sha:
                _snapshot(kind, repo_id, revision, allow_patterns=patterns)  # writes refs/<revision>; no download
        else:
            readme = Path(hf_hub_download(repo_id, README, repo_type="dataset", revision=revision))
            patterns = dataset_patterns(readme.read_text(encoding="utf-8"), config)
            folder = _snapshot(kind, repo_id, readme.parent.name, allow_patterns=patterns)
    except HfHubHTTPError as error:
        problem = " ".join(str(error).split())
        raise FetchError(f"{what} at revision {revision or 'main'} cannot be fetched from the Hub: {problem}") from None
    return folder, patterns


# ------------------------------------------------------------------------------------------ records


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)


def read_record(path: str | Path) -> dict:
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise FetchError(f"{path}: not a readable fetch record ({error}); run its fetch job again") from None
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        raise FetchError(f"{path}: fetch record without {', '.join(missing)}; run its fetch job again")
    return record


def fetched_commit(records, kind: str, repo_id: str, requested: str | None, config: str | None = None) -> str | None:
    """The commit the fetch of (kind, id) resolved, from the records a job was given; None when no record
    names it (a job run by hand, without fetch records: then the requested revision is used as it is).

    A record fetched for another revision than the configuration now pins is stale: an error.
    """
    for path in records or ():
        record = read_record(path)
        if (record["kind"], record["id"], record["config"]) != (kind, repo_id, config):
            continue
        if record["requested_revision"] != requested:
            raise FetchError(
                f"{path} was fetched for revision {record['requested_revision']!r} of {repo_id}, but the configuration "
                f"asks for {requested!r}: run its fetch job again (snakemake reruns it when the pin changes)"
            )
        return record["commit"]
    return None
