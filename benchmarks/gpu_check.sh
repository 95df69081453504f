#!/usr/bin/env bash
# The one command for a GPU machine (fits the device tool: a few minutes on an H200).
# Builds for sm_90, runs the CUDA tests, measures copy bandwidth and the bf16 GEMM rate, runs
# every op benchmark and `bertfast bench` end to end, writes everything under $OUT, and prints
# a short table last.
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

echo "== op benchmarks"
timeout 300 $PY benchmarks/run_all.py --device cuda --out "$OUT" --timeout 150 >"$OUT/op_benchmarks.log" 2>&1
tail -5 "$OUT/op_benchmarks.log"

echo "== end to end (bertfast bench; add --compile on for torch.compile rows)"
plot=""
$PY -c "import matplotlib" 2>/dev/null && plot="--plot $OUT/plots"
timeout 240 $PY -m bertfast.bench --device cuda --compile off --steps 5 --json "$OUT/e2e.json" \
  --csv "$OUT/e2e.csv" $plot >"$OUT/e2e.log" 2>&1
echo "bertfast bench exit $?"

echo "== summary"
$PY benchmarks/summarize.py "$OUT" | tee "$OUT/summary.txt"
sed -n '/^model /,$p' "$OUT/e2e.log"
