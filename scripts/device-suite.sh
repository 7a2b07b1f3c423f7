#!/usr/bin/env bash
# One device call: install the workspace and carried wheels (scripts/device-install.sh; carry
# pytest-xdist and execnet in .whl/ to spread the suite over workers), then in parallel on the GPU:
# the whole conformance suite against triton (xdist workers), the quick suite against cuda, the
# nsa-triton unit tests compiled, compute-sanitizer memcheck and racecheck of the forward+backward
# (benchmarks/sanitize.py). Logs in $OUT; a summary line per job printed last.
#
#   NSA_SUITE_WORKERS=8 bash scripts/device-suite.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cpu NSA_CUDA_CACHE="${NSA_CUDA_CACHE:-/tmp/nsa-cuda-cache}"
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/suite-out}"
mkdir -p "$OUT"
source scripts/device-install.sh > "$OUT/install.log" 2>&1
workers=(-n "${NSA_SUITE_WORKERS:-8}")
suite=(python3 -m pytest --pyargs nsa_conformance.suite --nsa-device cuda -q -p no:cacheprovider)
job() {  # name, seconds, command...
    local name=$1 limit=$2
    shift 2
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "$name: rc=$? $(grep -E '(passed|failed|error|SUMMARY)' "$OUT/$name.log" | tail -n 1)" > "$OUT/$name.rc"
}
job conformance-triton-cuda 300 "${suite[@]}" --nsa-backend triton "${workers[@]}" \
    --junitxml "$OUT/conformance-triton-cuda.xml" &
job conformance-cuda-quick 300 "${suite[@]}" --nsa-backend cuda -m quick -n 4 &
job triton-unit-gpu 240 python3 -m pytest -q -p no:cacheprovider packages/nsa-triton/tests &
job memcheck 240 compute-sanitizer --tool memcheck python3 packages/nsa-triton/benchmarks/sanitize.py &
job racecheck 240 compute-sanitizer --tool racecheck python3 packages/nsa-triton/benchmarks/sanitize.py &
wait
cat "$OUT"/*.rc
