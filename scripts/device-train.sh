#!/usr/bin/env bash
# Issue 13's evidence on one GPU, one phase per device call (each under the 10-minute limit):
#
#   bash scripts/device-train.sh quality   # (a) NSA against dense at 4k: same data, steps and tokens
#   bash scripts/device-train.sh needle    # (b) needle retrieval trained at NEEDLE_LEN, evaluated 8k..64k
#
# A phase first times PROBE_STEPS steps of each model (probe runs, then discarded; they also compile
# the Triton kernels), then gives NSA and dense the same number of steps: as many as fit PHASE_S
# seconds (default 390) for both, at most MAX_STEPS, and evaluates both latest checkpoints. (c), the
# gate statistics, are in the NSA runs' heartbeats; the plots are drawn at the end of each phase.
# Writes $OUT/<run>/heartbeat.jsonl, $OUT/<run>.json (evaluate.py), $OUT/*.png, $OUT/device-train.log.
# CONFIG and BACKEND (default triton) override the phase's config file and NSA's backend. STEPS skips
# the probes and trains that many steps; ONLY trains a subset of the phase's runs (e.g. ONLY=dense-4k
# STEPS=1053 gives a run cut short elsewhere its partner with the same data, steps and tokens).
# Needs pyyaml and tqdm on the device (no network: carry their wheels in .whl/ if they are missing).
set -euo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/device-train-out}"
mkdir -p "$OUT"
phase="${1:?usage: device-train.sh quality|needle}"
source scripts/device-install.sh > "$OUT/device-train.log" 2>&1
python3 -c 'import yaml, tqdm' || { echo "pyyaml or tqdm missing: carry their wheels in .whl/"; exit 1; }
export PYTHONPATH="examples/train${PYTHONPATH:+:$PYTHONPATH}"
RUNS=/tmp/device-train-runs
PROBE_STEPS="${PROBE_STEPS:-25}"
PHASE_S="${PHASE_S:-390}"

case "$phase" in
  quality)
    config="${CONFIG:-examples/train/configs/default.yaml}"; names=(nsa-4k dense-4k); max_steps="${MAX_STEPS:-3000}"
    common=(--set data.max_bytes="${MAX_BYTES:-60000000}" --set train.eval_every=250)
    evaluate=(--val-batches 64) ;;
  needle)
    config="${CONFIG:-examples/train/configs/needle.yaml}"; names=(needle-nsa needle-dense); max_steps="${MAX_STEPS:-3000}"
    common=(--set data.seq_len="${NEEDLE_LEN:-8192}" --set train.eval_every=250)
    evaluate=(--needle-lengths 8192,16384,32768,65536 --depths 0.05,0.25,0.5,0.75,0.95 --samples 10) ;;
  *) echo "unknown phase $phase: quality or needle"; exit 2 ;;
esac
attention() { [[ "$1" == *dense* ]] && echo dense || echo nsa; }

train() {  # name steps run_dir [extra --set ...]
  local name=$1 steps=$2 dir=$3; shift 3
  python3 examples/train/train.py --config "$config" "${common[@]}" \
      --set model.attention="$(attention "$name")" --set model.backend="${BACKEND:-triton}" \
      --set train.steps="$steps" --set ops.run_dir="$dir" --set ops.progress=false \
      --set ops.checkpoint_every=1000000 "$@" >> "$OUT/device-train.log" 2>&1
}

seconds_per_step() {  # run_dir -> median seconds per step of its heartbeats after the first
  python3 - "$1" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/heartbeat.jsonl") if l.strip()]
start = next(r for r in rows if r["kind"] == "start")["config"]
tokens = start["train"]["batch_size"] * start["data"]["seq_len"]
rates = [r["tokens_per_s"] for r in rows if r["kind"] == "train"][1:]
print(f"{tokens / statistics.median(rates):.4f}")
PY
}

if [ -n "${ONLY:-}" ]; then
  read -r -a names <<< "$ONLY"
fi
if [ -n "${STEPS:-}" ]; then
  steps=$STEPS
  echo "training ${names[*]} for $steps steps (STEPS)" | tee -a "$OUT/device-train.log"
else
  total=0
  for name in "${names[@]}"; do
    rm -rf "$RUNS/probe-$name"
    train "$name" "$PROBE_STEPS" "$RUNS/probe-$name" --set ops.heartbeat_every=5 --set train.eval_every=1000000
    s=$(seconds_per_step "$RUNS/probe-$name")
    echo "probe $name: $s s/step" | tee -a "$OUT/device-train.log"
    total=$(python3 -c "print($total + $s)")
  done
  steps=$(python3 -c "print(max(50, min($max_steps, int($PHASE_S / $total))))")
  echo "training ${names[*]} for $steps steps ($total s per step of all)" | tee -a "$OUT/device-train.log"
fi

for name in "${names[@]}"; do
  rm -rf "$RUNS/$name"
  start=$(date +%s)
  train "$name" "$steps" "$RUNS/$name" || echo "FAILED: train $name" | tee -a "$OUT/device-train.log"
  echo "$name: $steps steps in $(( $(date +%s) - start )) s" | tee -a "$OUT/device-train.log"
  python3 examples/train/evaluate.py "$RUNS/$name" "${evaluate[@]}" --out "$OUT/$name.json" \
      >> "$OUT/device-train.log" 2>&1 || echo "FAILED: evaluate $name" | tee -a "$OUT/device-train.log"
  mkdir -p "$OUT/$name" && cp "$RUNS/$name/heartbeat.jsonl" "$OUT/$name/"
done

needles=()
if [ "$phase" = needle ]; then results=("${names[@]/#/$OUT/}"); needles=(--needle "${results[@]/%/.json}"); fi
python3 examples/train/plot.py --runs "${names[@]/#/$RUNS/}" "${needles[@]}" --out "$OUT" \
    >> "$OUT/device-train.log" 2>&1 || echo "FAILED: plot" | tee -a "$OUT/device-train.log"

python3 - "$OUT" "${names[@]}" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for name in sys.argv[2:]:
    path = out / f"{name}.json"
    if not path.exists():
        print(f"{name}: no evaluation"); continue
    r = json.loads(path.read_text())
    by_length = {}
    for cell in r.get("needle", []):
        by_length.setdefault(cell["length"], []).append(cell["accuracy"])
    needle = {n: round(100 * sum(a) / len(a), 1) for n, a in by_length.items()}
    print(f"{name}: step {r.get('step')}, val loss {r.get('val_loss')}, needle % by length {needle}")
PY
