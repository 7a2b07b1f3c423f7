#!/usr/bin/env bash
# One device call: install the workspace (scripts/device-install.sh), then the whole conformance
# suite against BACKEND on the GPU, JAX (the float64 gradient oracle) kept on the CPU. The log and
# a JUnit report go to $OUT/conformance-BACKEND.{log,xml}; the backend's xfail file is applied.
#
#   bash scripts/device-conformance.sh BACKEND [pytest options, e.g. -m quick, -x, --nsa-dtype bfloat16]
set -euo pipefail
export PYTHONUNBUFFERED=1
backend="${1:?usage: scripts/device-conformance.sh BACKEND [pytest options]}"
shift
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/conformance-out}"
mkdir -p "$OUT"
source scripts/device-install.sh

known_gaps=()
if [ -f "packages/nsa-$backend/conformance-xfail.txt" ]; then
    known_gaps=(--nsa-xfail "packages/nsa-$backend/conformance-xfail.txt")
fi
JAX_PLATFORMS=cpu python3 -m pytest --pyargs nsa_conformance.suite --nsa-backend "$backend" \
    --nsa-device cuda "${known_gaps[@]}" --junitxml "$OUT/conformance-$backend.xml" "$@" \
    2>&1 | tee "$OUT/conformance-$backend.log"
