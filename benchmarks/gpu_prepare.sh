#!/usr/bin/env bash
# Prepare, on a machine with a package registry, what benchmarks/gpu_check.sh needs on an
# air-gapped GPU node (Python 3.12, torch and transformers installed, no network, at most 64 MiB
# of working tree copied over):
#
#   bash benchmarks/gpu_prepare.sh [BUNDLE]            (default gpu-bundle/, which git ignores)
#
#   BUNDLE/wheels/   pip download --no-deps of benchmarks/gpu-requirements.txt for the node's Python
#                    (GPU_PYTHON, default 3.12) on manylinux x86_64; pure-Python wheels where that
#                    is all a project publishes
#   BUNDLE/model/    the check's model: DistilBERT-base's config and the uncased BERT tokenizer,
#                    no weights (the node draws them from a seed)
# and then checks that the bundle and the working tree together stay within GPU_LIMIT_MIB
# (default 64): it fails, naming the sizes, when they do not.
set -euo pipefail
cd "$(dirname "$0")/.."

BUNDLE="${1:-gpu-bundle}"
GPU_PYTHON="${GPU_PYTHON:-3.12}"
GPU_LIMIT_MIB="${GPU_LIMIT_MIB:-64}"
mkdir -p "$BUNDLE"
rm -rf "$BUNDLE/wheels" "$BUNDLE/model"

echo "=== wheels for Python $GPU_PYTHON, manylinux x86_64 -> $BUNDLE/wheels"
python -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$GPU_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 --platform any \
    --requirement benchmarks/gpu-requirements.txt --dest "$BUNDLE/wheels"
ls -1 "$BUNDLE/wheels"
# One wheel per line of the list, no more and no less.
wanted=$(grep -cvE '^\s*(#|$)' benchmarks/gpu-requirements.txt)
got=$(find "$BUNDLE/wheels" -name '*.whl' | wc -l)
if [ "$wanted" -ne "$got" ]; then
    echo "gpu_prepare: error: $got wheels in $BUNDLE/wheels for $wanted lines of benchmarks/gpu-requirements.txt" >&2
    exit 1
fi

echo "=== the check's model -> $BUNDLE/model"
python benchmarks/gpu_bundle.py model "$BUNDLE/model"

echo "=== what travels to the GPU node"
{
    echo "Made by benchmarks/gpu_prepare.sh on $(date -u '+%Y-%m-%d %H:%M UTC') for Python $GPU_PYTHON"
    echo "from commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
} > "$BUNDLE/MANIFEST.txt"
python benchmarks/gpu_bundle.py size "$BUNDLE" --limit-mib "$GPU_LIMIT_MIB" | tee -a "$BUNDLE/MANIFEST.txt"
exit "${PIPESTATUS[0]}"
