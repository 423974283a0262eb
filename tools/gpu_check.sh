#!/usr/bin/env bash
# The GPU check (make gpu-check): one report, under 8 minutes on one CUDA GPU, written to OUT/report.md.
#   1. the Triton test suite on the device: fp32/fp16 per op (tests/kernels/*_triton.py) and bf16
#      (tests/kernels/test_triton_bfloat16.py), forward and backward against the float64 reference;
#   2. every GPU kernel case (configs/benchmarks/kernels/*/*_triton.yaml): time, GB/s and % of the card's peak;
#   3. model throughput, eager and compiled, of one small variant per family beside timm's own model where timm
#      has one (inference, batch 64, 224, fp32).
# Each step has its own time limit; a step that fails or runs out of time is reported and the next one runs.
# Usage: tools/gpu_check.sh [OUT]   (PYTHON selects the interpreter, default .venv/bin/python)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-gpu_check}
mkdir -p "$OUT"
REPORT="$OUT/report.md"
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled
unset TRITON_INTERPRET

step() {  # step LIMIT_S TITLE COMMAND...: run with a time limit, keep the tail of its output in the report
    local limit=$1 title=$2; shift 2
    echo "## $title" >>"$REPORT"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/step.log" 2>&1
    local rc=$?
    { echo '```'; tail -n 40 "$OUT/step.log"; echo '```'
      echo "exit $rc$([ $rc -eq 124 ] && echo " (stopped at the ${limit} s limit)"), $((SECONDS - start)) s"
      echo; } >>"$REPORT"
}

{
    echo "# gpu-check, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    "$PY" -c 'import torch, triton; print("torch", torch.__version__, "CUDA", torch.version.cuda, "triton", triton.__version__, "device", torch.cuda.get_device_name())' 2>&1
    git rev-parse --short HEAD 2>/dev/null
    echo '```'
    echo
} >"$REPORT"

if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA device visible to $PY: nothing to check" | tee -a "$REPORT"
    exit 1
fi

step 210 "1. Triton kernels on CUDA (fp32, fp16, bf16; forward and backward against the reference)" \
    "$PY" -m pytest -m triton tests/kernels -q -p no:cacheprovider -x --no-header

: >"$OUT/cases.md"
cases() {
    for case in configs/benchmarks/kernels/*/*.yaml; do
        grep -q '^device: cuda' "$case" || continue
        echo "### $case"
        "$PY" tools/benchmark.py --case "$case" --runs 10 --warmup 3 --md "$OUT/case.md" >/dev/null || return 1
        cat "$OUT/case.md"
    done
}
step 120 "2. GPU kernel cases (median of 10; GB/s of the compulsory traffic, % of the card's peak)" \
    bash -c "$(declare -f cases); PY='$PY' OUT='$OUT' cases"

MODELS="zoo_davit_tiny zoo_maxvit_tiny_tf_224 zoo_mambaout_femto zoo_van_b0 zoo_transnext_micro zoo_litv2_small
        zoo_biformer_tiny zoo_vim_tiny zoo_plainmamba_l1 zoo_sparsifiner_deit_small zoo_lookupvit_s16"
step 100 "3a. Models, eager (inference, batch 64, 224, fp32; anchors: timm's model of the same name)" \
    "$PY" tools/benchmark.py --models $MODELS --device cuda --batch-size 64 --runs 10 --warmup 3 \
    --md "$OUT/models_eager.md"
cat "$OUT/models_eager.md" >>"$REPORT" 2>/dev/null
step 150 "3b. Models, torch.compile (inductor)" \
    "$PY" tools/benchmark.py --models zoo_davit_tiny zoo_maxvit_tiny_tf_224 zoo_transnext_micro zoo_biformer_tiny \
    zoo_vim_tiny --device cuda --batch-size 64 --runs 10 --warmup 3 --compile --md "$OUT/models_compiled.md"
cat "$OUT/models_compiled.md" >>"$REPORT" 2>/dev/null
echo "report: $REPORT"
