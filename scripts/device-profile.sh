#!/usr/bin/env bash
# One device call: the compiler's resource report of every triton kernel at T (default 16384),
# then an ncu profile (speed of light, occupancy, launch, warp states, memory) of each of them
# once. Output: $OUT/kernel_report.txt, $OUT/ncu.txt.
#
#   bash scripts/device-profile.sh [T]
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/profile-out}"
mkdir -p "$OUT"
T="${1:-16384}"
source scripts/device-install.sh
cd packages/nsa-triton/benchmarks
timeout 120 python3 kernel_report.py "$T" > "$OUT/kernel_report.txt" 2>&1
timeout "${NCU_TIMEOUT:-200}" ncu --kernel-name regex:'^_' --launch-count 24 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
    python3 kernel_report.py "$T" > "$OUT/ncu.txt" 2>&1
echo "ncu rc=$?"
