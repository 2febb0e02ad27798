"""The fetch stage without Snakemake: served from a Hugging Face cache laid out as huggingface_hub
writes it (tests/hf_cache.py), without a network request; a pinned revision the cache lacks fails
at once with one line; the configuration keys that pin revisions; what a job loads from a record.

The `crisp fetch` commands run as subprocesses, so that HF_HOME is read when huggingface_hub is
imported, as in a pipeline job. Where this runs as root, they run in a network namespace with no
network at all (`unshare -n`); everywhere, an audit hook (tests/network_audit) records every
attempt at a connection or a name lookup, and the tests assert there was none.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hf_cache import (
    DATASET_COMMIT,
    DATASET_ID,
    MODEL_COMMIT,
    MODEL_ID,
    add_snapshot,
    cache_environment,
    repo_folder,
    seed_cache,
)
from hub_server import HubServer, Repository

from crisp.config import load_config
from crisp.errors import ConfigError, FetchError
from crisp.fetch import dataset_patterns, fetched_commit
from crisp.settings import fetch_inputs, fetch_settings, train_settings

REPO = Path(__file__).resolve().parents[1]
AUDIT = Path(__file__).parent / "network_audit"
# A port nothing listens on: a request is refused at once (outside a network namespace too).
REFUSED_ENDPOINT = "http://127.0.0.1:9"


def can_block_network() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


def offline_environment(hf_home: Path, network_log: Path) -> dict[str, str]:
    """The seeded cache, the network audit hook, and no Hub switch-off: the fetch must not need one."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(cache_environment(hf_home))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(AUDIT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["CRISP_NETWORK_LOG"] = str(network_log)
    return env


def run_blocked(command: list[str], env: dict, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run a command with no network: in a fresh network namespace where possible, and else against
    an endpoint that refuses connections."""
    if can_block_network():
        command = ["unshare", "-n", *command]
    else:
        env = {**env, "HF_ENDPOINT": REFUSED_ENDPOINT}
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def network_attempts(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf-home")
    seed_cache(home)
    return home


def write_config(folder: Path, **overrides) -> Path:
    path = folder / "pins.yaml"
    path.write_text(yaml.safe_dump(overrides))
    return path


def test_the_paper_protocol_is_fetched_from_the_cache_without_a_request(hf_home, tmp_path):
    log = tmp_path / "network.log"
    out = tmp_path / "fetch"
    command = [sys.executable, "-m", "crisp", "fetch", "--config", str(REPO / "config.yaml"), "--out", str(out)]
    result = run_blocked(command, offline_environment(hf_home, log), cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    model = json.loads((out / "models" / f"{MODEL_ID}.json").read_text())
    dataset = json.loads((out / "datasets" / "nyu-mll--glue--sst2.json").read_text())
    assert (model["id"], model["commit"], model["source"]) == (MODEL_ID, MODEL_COMMIT, "cache")
    assert (dataset["id"], dataset["config"], dataset["commit"]) == (DATASET_ID, "sst2", DATASET_COMMIT)
    assert model["requested_revision"] is None  # unpinned: resolved from refs/main, once
    # The files and their sizes are the blobs' the snapshot links to.
    snapshot = repo_folder(hf_home / "hub", "model", MODEL_ID) / "snapshots" / MODEL_COMMIT
    assert model["files"] == {name: (snapshot / name).resolve().stat().st_size for name in model["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(model["files"])
    assert sorted(dataset["files"]) == [
        "README.md",
        *(f"sst2/{split}-00000-of-00001.parquet" for split in ("test", "train", "validation")),
    ]
    assert network_attempts(log) == []


def test_a_pinned_revision_missing_from_the_cache_fails_at_once_in_one_line(hf_home, tmp_path):
    log = tmp_path / "network.log"
    pins = write_config(tmp_path, revisions={MODEL_ID: "0123456789abcdef0123456789abcdef01234567"})
    command = [sys.executable, "-m", "crisp", "fetch", "--config", str(REPO / "config.yaml"), "--config", str(pins),
               "--out", str(tmp_path / "fetch")]  # fmt: skip
    started = time.monotonic()
    result = run_blocked(command, offline_environment(hf_home, log), cwd=tmp_path)
    seconds = time.monotonic() - started

    assert result.returncode == 1
    assert seconds < 20, f"took {seconds:.1f} s"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert MODEL_ID in lines[0] and "0123456789abcdef0123456789abcdef01234567" in lines[0]
    assert "snakemake --until fetch" in lines[0] and "cannot be reached" in lines[0]
    assert not (tmp_path / "fetch" / "models").exists()  # no record of what was not fetched


def served_repositories(hf_home: Path) -> tuple[dict, dict]:
    """(kind, id) -> the seeded snapshot folder, and (kind, id) -> its commit."""
    served = {
        ("model", MODEL_ID): repo_folder(hf_home / "hub", "model", MODEL_ID) / "snapshots" / MODEL_COMMIT,
        ("dataset", DATASET_ID): repo_folder(hf_home / "hub", "dataset", DATASET_ID) / "snapshots" / DATASET_COMMIT,
    }
    return served, {("model", MODEL_ID): MODEL_COMMIT, ("dataset", DATASET_ID): DATASET_COMMIT}


def test_a_revision_the_hub_does_not_have_fails_in_one_line(hf_home, tmp_path):
    served, commits = served_repositories(hf_home)
    repositories = [Repository(kind, repo, commits[kind, repo], folder) for (kind, repo), folder in served.items()]
    pins = write_config(tmp_path, revisions={MODEL_ID: "v9.9"})
    command = [sys.executable, "-m", "crisp", "fetch", "--config", str(REPO / "config.yaml"), "--config", str(pins),
               "--out", str(tmp_path / "fetch")]  # fmt: skip
    with HubServer(repositories) as server:
        env = {**offline_environment(tmp_path / "hf-home", tmp_path / "network.log"), "HF_ENDPOINT": server.endpoint}
        result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and MODEL_ID in lines[0] and "v9.9" in lines[0], result.stderr


def test_what_the_cache_lacks_is_downloaded_from_a_server_speaking_the_hub_protocol(hf_home, tmp_path):
    """huggingface_hub's own download path, against a Hub on the loopback address (tests/hub_server.py)
    serving the seeded files; afterwards the new cache serves them without a request."""
    served, commits = served_repositories(hf_home)
    repositories = [Repository(kind, repo, commits[kind, repo], folder) for (kind, repo), folder in served.items()]
    empty_home = tmp_path / "hf-home"
    out = tmp_path / "fetch"
    command = [sys.executable, "-m", "crisp", "fetch", "--config", str(REPO / "config.yaml"), "--out", str(out)]
    with HubServer(repositories) as server:
        env = {**offline_environment(empty_home, tmp_path / "download.log"), "HF_ENDPOINT": server.endpoint}
        result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert any(request.startswith("GET") and request.endswith("/model.safetensors") for request in server.requests)

    for (kind, repo_id), name in ((("model", MODEL_ID), f"models/{MODEL_ID}"), (("dataset", DATASET_ID),
                                  "datasets/nyu-mll--glue--sst2")):  # fmt: skip
        record = json.loads((out / f"{name}.json").read_text())
        commit = commits[kind, repo_id]
        assert (record["commit"], record["source"]) == (commit, "hub")
        repo = repo_folder(empty_home / "hub", kind, repo_id)
        assert (repo / "refs" / "main").read_text() == commit  # as huggingface_hub writes it
        for file, size in record["files"].items():
            downloaded = repo / "snapshots" / commit / file
            assert downloaded.is_symlink() and downloaded.resolve().parent == (repo / "blobs").resolve()
            assert downloaded.read_bytes() == (served[kind, repo_id] / file).read_bytes() and size > 0
    assert "model.safetensors" in json.loads((out / f"models/{MODEL_ID}.json").read_text())["files"]

    # The server is gone: the new cache serves both, without a request.
    log = tmp_path / "network.log"
    again = run_blocked(command, offline_environment(empty_home, log), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((out / f"models/{MODEL_ID}.json").read_text())["source"] == "cache"
    assert network_attempts(log) == []


def test_a_snapshot_holding_only_a_models_configuration_is_not_served(tmp_path):
    """What AutoConfig alone leaves in the cache: the fetch must not record it as the model."""
    hf_home = tmp_path / "hf-home"
    files = tmp_path / "files"
    files.mkdir()
    (files / "config.json").write_text('{"model_type": "distilbert"}')
    add_snapshot(hf_home / "hub", "model", "org/partial", MODEL_COMMIT, files)
    settings = json.dumps({"kind": "model", "id": "org/partial", "config": None, "revision": None})
    command = [sys.executable, "-m", "crisp", "fetch", "--settings", settings, "--out", str(tmp_path / "partial.json")]
    result = run_blocked(command, offline_environment(hf_home, tmp_path / "network.log"), cwd=tmp_path)
    assert result.returncode == 1 and "org/partial" in result.stderr and "cannot be reached" in result.stderr
    assert not (tmp_path / "partial.json").exists()


def test_a_model_entry_pins_its_revision_and_a_task_its_data_sets():
    config = load_config(
        [REPO / "config.yaml"],
        [f"models=[{{id: {MODEL_ID}, revision: v1.0}}]", "tasks.sst2.revision=refs/pr/3"],
    )
    assert config["models"] == [MODEL_ID]
    assert config["revisions"] == {MODEL_ID: "v1.0"}
    fetches = fetch_settings(config)
    assert fetches == {
        f"models/{MODEL_ID}": {"kind": "model", "id": MODEL_ID, "config": None, "revision": "v1.0"},
        "datasets/nyu-mll--glue--sst2": {
            "kind": "dataset", "id": DATASET_ID, "config": "sst2", "revision": "refs/pr/3"
        },
    }
    assert train_settings(config, "sst2", MODEL_ID, "dense_baseline", 0)["model_revision"] == "v1.0"
    assert fetch_inputs(config, task="sst2", model=MODEL_ID) == [
        "results/fetch/datasets/nyu-mll--glue--sst2.json",
        f"results/fetch/models/{MODEL_ID}.json",
    ]


def test_local_bundled_tiny_and_synthetic_inputs_need_no_fetch():
    config = load_config([REPO / "config.yaml", REPO / "config/demo.yaml"])
    assert fetch_settings(config) == {}
    smoke = load_config([REPO / "config.yaml", REPO / ".test/config.yaml"])
    assert fetch_settings(smoke) == {}
    assert fetch_inputs(smoke, task="sentiment", model="tiny:bert") == []


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["revisions.bert-base-uncased=abc"], "revisions.bert-base-uncased"),  # a model the config lacks
        (["models=[{id: tiny:bert, revision: abc}]"], "revisions.tiny:bert"),
        (["tasks.sst2={name: synthetic, revision: abc}"], "tasks.sst2.revision"),
        ([f"models=[{{id: {MODEL_ID}, revision: a}}]", f"revisions={{{MODEL_ID}: b}}"], "models.0.revision"),
        (["tasks.other={name: glue/sst2, revision: v2}"], "tasks.other.revision"),  # sst2 is unpinned
        ([f"models=[{{id: {MODEL_ID}, branch: main}}]"], "models.0.branch"),
    ],
)
def test_a_revision_that_cannot_apply_is_an_error_naming_its_key(overrides, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config([REPO / "config.yaml"], overrides)


def test_glue_presets_read_nyu_mll_glue_with_one_configuration_per_task():
    config = load_config([REPO / "config.yaml", REPO / "config/glue.yaml"])
    datasets = {name: fetch for name, fetch in fetch_settings(config).items() if fetch["kind"] == "dataset"}
    assert {(fetch["id"], fetch["config"]) for fetch in datasets.values()} == {
        (DATASET_ID, task) for task in ("sst2", "cola", "mrpc", "rte")
    }


def test_a_data_sets_files_come_from_its_readme_configs_block():
    readme = (
        "---\nconfigs:\n- config_name: cola\n  data_files:\n  - split: train\n    path: cola/train-*\n"
        "- config_name: sst2\n  data_files:\n  - split: train\n    path: sst2/train-*\n"
        "  - split: validation\n    path: sst2/validation-*\n---\n# GLUE\n"
    )
    assert dataset_patterns(readme, "sst2") == ["README.md", "sst2/train-*", "sst2/validation-*"]
    assert dataset_patterns("# no card\n", "sst2") == ["README.md", "sst2/*"]
    assert dataset_patterns(readme, None) == ["*"]


def test_a_job_loads_the_recorded_commit_and_refuses_a_record_of_another_pin(tmp_path):
    record = tmp_path / "model.json"
    record.write_text(json.dumps({
        "kind": "model", "id": MODEL_ID, "config": None, "requested_revision": None, "commit": MODEL_COMMIT,
        "files": {}, "source": "cache",
    }))  # fmt: skip
    assert fetched_commit([record], "model", MODEL_ID, None) == MODEL_COMMIT
    assert fetched_commit([record], "model", "other/model", None) is None
    assert fetched_commit([], "model", MODEL_ID, "v1") is None
    with pytest.raises(FetchError, match="fetched for revision None .* asks for 'v1'"):
        fetched_commit([record], "model", MODEL_ID, "v1")
