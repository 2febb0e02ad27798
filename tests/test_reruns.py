"""What makes Snakemake rerun a train job beyond its settings and code: the files of a local model
folder are inputs of that model's train jobs, so weights replaced in place rerun them (and the resume
stamp, tests/test_train.py, refuses their old checkpoints)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import yaml
from workflow_helpers import copy_repository, job_stats, run_snakemake

from crisp.modeling import load_model, load_tokenizer

pytestmark = pytest.mark.pipeline

SMOKE = ".test/config.yaml"


def save_local_model(folder, seed: int) -> None:
    """A tiny BERT saved as a local model folder (with the MiniLM tokenizer whose vocabulary it uses)."""
    torch.manual_seed(seed)
    load_model("tiny:bert").save_pretrained(folder)
    load_tokenizer("bundled:minilm").save_pretrained(folder)


def test_replacing_a_local_models_weights_in_place_reruns_its_train_jobs(tmp_path):
    workdir = copy_repository(tmp_path / "repo")
    folder = tmp_path / "my model"
    save_local_model(folder, seed=0)
    overlay = {
        "models": [str(folder)],
        "tasks": {"pairs": None, "sentiment": {"synthetic": {"train_size": 64, "validation_size": 32}}},
        "seeds": [0],
        "training": {"epochs": 1},
    }
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    args = ("--cores", "2", "--configfile", SMOKE, "overlay.yaml", "--until", "train")
    run_snakemake(workdir, *args)

    def planned() -> Counter:
        result = run_snakemake(workdir, "--dry-run", *args)
        return job_stats(result.stdout + result.stderr)

    assert planned() == Counter()
    save_local_model(folder, seed=1)  # other weights under the same path
    jobs = planned()
    assert jobs["train"] == 2 and "data" not in jobs, jobs  # both experiments of that model, nothing else
