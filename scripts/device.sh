#!/usr/bin/env bash
# One device call: install the workspace and any carried wheels (scripts/device-install.sh: no
# network, editable, no deps), show the GPU and the backends, run the benchmark runner
# (its conformance gate first), draw the plots, and pack the results into $OUT.
#
#   bash scripts/device.sh WORKLOAD [WORKLOAD...] --backend NAME [NAME...] [run options]
#
# Everything after the script name goes to `python -m bench run`. Set NSA_BENCH_COMMIT to the
# commit being measured when the copy on the device has no .git. BENCH_TIMEOUT (seconds, default
# 540) interrupts the runner so that what it finished is still plotted and packed before the
# device's 600 s limit; the runner writes its files after each backend.
set -euo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/bench-out}"
mkdir -p "$OUT"

source scripts/device-install.sh

status=0
timeout --signal=INT "${BENCH_TIMEOUT:-540}" python3 -m bench run "$@" 2> "$OUT/run.log" \
    | tee "$OUT/table.txt" || status=$?
python3 -m bench plot > /dev/null || status=$?
tar -czf "$OUT/results.tar.gz" bench/results
tail -n 5 "$OUT/run.log"
exit "$status"
