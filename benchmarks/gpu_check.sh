#!/usr/bin/env bash
# The one command for a GPU machine (fits the device tool: a few minutes on an H200).
# Builds for sm_90, runs the CUDA tests, measures copy bandwidth and the bf16 GEMM rate, runs
# every op benchmark, writes everything under $OUT, and prints a short table last.
#   OUT=/tmp/out bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}

echo "== build (sm_$TORCH_CUDA_ARCH_LIST)"
start=$(date +%s)
if ! $PY setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  echo "BUILD FAILED"
  exit 1
fi
echo "built in $(( $(date +%s) - start )) s"

echo "== CUDA tests"
$PY -m pytest -q -p no:cacheprovider tests -k "cuda" --junitxml="$OUT/cuda_tests.xml" 2>&1 | tail -25 | tee "$OUT/cuda_tests.log"

echo "== benchmarks"
for bench in benchmarks/bench_*.py; do
  name=$(basename "$bench" .py)
  timeout 240 $PY "$bench" --device cuda --json "$OUT/$name.json" 2>&1 | tail -30 | tee "$OUT/$name.log"
done

$PY benchmarks/summarize.py "$OUT" | tee "$OUT/summary.txt"
