#!/usr/bin/env bash
# One device call (one H200): the triton decode tests compiled for the GPU (not interpreted; the
# CUDA-graph test included), then time_decode.py (paper shape, S = 8k..128k, batch 1/16/64, cuDNN
# dense decode and the copy bandwidth in the same run; work-split variants at 64k first). Logs:
# $OUT/test_decode.{log,xml}, $OUT/time_decode.log; the table is printed last.
#
#   bash scripts/device-dtriton.sh [time_decode.py arguments, default --variants]
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/dtriton-out}"
mkdir -p "$OUT"
source scripts/device-install.sh
unset TRITON_INTERPRET
timeout 150 python3 -m pytest -q -p no:cacheprovider packages/nsa-triton/tests/test_decode.py \
    --junitxml "$OUT/test_decode.xml" > "$OUT/test_decode.log" 2>&1
echo "test_decode rc=$?"
tail -n 15 "$OUT/test_decode.log"
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--variants)
timeout 150 python3 packages/nsa-triton/benchmarks/time_decode.py "${args[@]}" > "$OUT/time_decode.log" 2>&1
echo "time_decode rc=$?"
tail -n 45 "$OUT/time_decode.log"
