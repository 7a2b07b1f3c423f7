#!/usr/bin/env bash
# One device call for backend "cuda" (under 5 minutes on an H200): install the workspace
# (scripts/device-install.sh), build the extension (JIT, timed), then
#   1. packages/nsa-cuda/benchmarks/check_selected.py: the float64 oracle at small sizes, triton's
#      selected kernel at the paper shape (T=16k and 64k by default), and the times;
#   2. compute-sanitizer memcheck, racecheck and synccheck on small cases of the cuda kernel alone
#      (PyTorch's caching allocator off, so an out-of-bounds access leaves its own allocation);
# and print the table last. Logs and results go to $OUT; the build cache to $NSA_CUDA_CACHE.
# NSA_CUDA_NCU=1 adds an ncu profile (speed of light, memory) of both selected kernels at T=16k.
#
#   bash scripts/device-cuda.sh [T ...]
#
# torch.utils.cpp_extension.load needs ninja. Where the GPU machine has none, carry its wheel:
# `python3 -m pip download ninja --no-deps --only-binary :all: -d .whl` here, `.whl` in the call's
# carry; scripts/device-install.sh installs it under /tmp/site and puts its bin/ on PATH.
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/cuda-out}"
mkdir -p "$OUT"
export NSA_CUDA_CACHE="${NSA_CUDA_CACHE:-/tmp/nsa-cuda-cache}"
source scripts/device-install.sh
command -v ninja > /dev/null || { echo "ninja not found: carry its wheel in .whl/ (see the header)"; exit 1; }
python3 -m nsa_spec.info > "$OUT/info.txt" 2>&1
nvcc --version | tail -1

status=0
start=$(date +%s)
NSA_CUDA_VERBOSE=1 timeout 200 python3 -c 'from nsa_cuda.build import extension; extension()' \
    > "$OUT/build.log" 2>&1 || { echo "BUILD FAILED"; tail -n 40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s (log: build.log)"
sed -n '/^cuda /,/^[a-z]/p' "$OUT/info.txt" | head -n 3

check=packages/nsa-cuda/benchmarks/check_selected.py
tokens=("$@")
[ "${#tokens[@]}" -gt 0 ] || tokens=(16384 65536)
timeout 200 python3 "$check" --out "$OUT" --tokens "${tokens[@]}" > "$OUT/check_selected.log" 2>&1
check_rc=$?
[ "$check_rc" -eq 0 ] || status=1
sanitizers=()
for tool in memcheck racecheck synccheck; do
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 60 compute-sanitizer --tool "$tool" --error-exitcode 7 \
        python3 "$check" --sanitize > "$OUT/sanitizer-$tool.log" 2>&1
    rc=$?
    summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|SYNCCHECK SUMMARY" "$OUT/sanitizer-$tool.log" | tail -n 1)
    sanitizers+=("$tool: rc=$rc ${summary:-no summary line (see sanitizer-$tool.log)}")
    [ "$rc" -eq 0 ] || status=1
done

if [ "${NSA_CUDA_NCU:-0}" != 0 ]; then  # optional: ncu of both selected kernels at T=16k
    timeout 150 ncu --kernel-name regex:'selected_attention_fwd|_slc_fwd' --launch-count 2 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis python3 "$check" --profile 16384 \
        > "$OUT/ncu-selected.txt" 2>&1 || echo "ncu: rc=$? (see ncu-selected.txt)"
fi
echo "total: $(( $(date +%s) - start )) s"
echo
printf '%s\n' "${sanitizers[@]}"
echo "check_selected.py: rc=$check_rc"
if [ -f "$OUT/check_selected.md" ]; then cat "$OUT/check_selected.md"; else tail -n 30 "$OUT/check_selected.log"; fi
exit "$status"
