#!/usr/bin/env bash
# One device call: install the workspace (no network: setuptools, editable, no deps), add any
# carried wheels (.whl/, e.g. fla-core), show the GPU and the backends, run the benchmark runner
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

python3 -m pip install -q --no-index --no-build-isolation --no-deps \
    -e packages/nsa-spec -e packages/nsa-torch -e conformance
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
python3 -m nsa_spec.info | grep -E '^[a-z]' || true

status=0
timeout --signal=INT "${BENCH_TIMEOUT:-540}" python3 -m bench run "$@" 2> "$OUT/run.log" \
    | tee "$OUT/table.txt" || status=$?
python3 -m bench plot > /dev/null || status=$?
tar -czf "$OUT/results.tar.gz" bench/results
tail -n 5 "$OUT/run.log"
exit "$status"
