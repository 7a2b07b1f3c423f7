#!/usr/bin/env bash
# One device call: examples/generate on one GPU. First a check at tiny sizes in float32 that a CUDA
# graph replay generates what eager steps do (NSA and dense: same tokens, logits' largest
# difference printed) and that both equal re-running the whole prefix; then the issue-11 numbers:
# generate.py at 16k and 64k prompts, 256 new tokens, NSA and dense, eager and --cuda-graph
# (bfloat16, default dispatch). Writes $OUT/gen-*.json and $OUT/device-gen.log; prints a table last.
# Needs pyyaml and tqdm on the device (no network: carry their wheels in .whl/ if they are missing).
#
#   bash scripts/device-gen.sh
set -euo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/device-gen-out}"
mkdir -p "$OUT"
source scripts/device-install.sh
python3 -c 'import yaml, tqdm' || { echo "pyyaml or tqdm missing: carry their wheels in .whl/"; exit 1; }

# A failure (e.g. a backend whose decode step syncs the host, which graph capture refuses) is
# logged and the remaining runs go on; rerun one with --backend torch to compare.
python3 - <<'PY' 2>&1 | tee "$OUT/device-gen.log" || echo "FAILED: the graph == eager check"
import sys

import torch

sys.path.insert(0, "examples/generate")
from nsa_generate.decoding import generate, generate_without_cache
from nsa_train.config import ModelConfig
from nsa_train.model import LM

tiny = dict(width=64, layers=2, heads=8, kv_heads=2, head_dim=16, mlp_hidden=128, cmp_len=8,
            cmp_stride=4, slc_len=16, top_n=3, window=32, init_std=0.2)
for attention in ("nsa", "dense"):
    torch.manual_seed(0)
    model = LM(ModelConfig(attention=attention, **tiny)).cuda().eval()
    prompt = torch.randint(0, 259, (3, 300), device="cuda")
    eager = generate(model, prompt, 40)
    graph = generate(model, prompt, 40, cuda_graph=True)
    full = generate_without_cache(model, prompt, 40)
    print(f"check {attention}: graph tokens == eager {torch.equal(graph.tokens, eager.tokens)}, "
          f"eager == full prefix {torch.equal(eager.tokens, full.tokens)}, "
          f"max |logit diff| graph-eager {(graph.logits - eager.logits).abs().max().item():.3g}, "
          f"eager-full {(eager.logits - full.logits).abs().max().item():.3g}")
PY

for len in 16384 65536; do
  for graph in "" "--cuda-graph"; do
    name="gen-$((len / 1024))k${graph:+-graph}"
    python3 examples/generate/generate.py --attention both --prompt-len "$len" --new-tokens 256 \
        --no-progress $graph --out "$OUT/$name.json" 2>&1 | tee -a "$OUT/device-gen.log" \
        || echo "FAILED: $name" | tee -a "$OUT/device-gen.log"
  done
done

python3 - "$OUT" <<'PY'
import json, pathlib, sys
print(f"{'attention':>9} {'graph':>5} {'prompt':>7} {'prefill s':>9} {'ms/step':>8} {'tokens/s':>9}")
for path in sorted(pathlib.Path(sys.argv[1]).glob("gen-*.json")):
    for r in json.loads(path.read_text())["runs"]:
        print(f"{r['attention']:>9} {r['cuda_graph']!s:>5} {r['prompt_len']:>7} {r['prefill_s']:>9.3f} "
              f"{r['ms_per_step']:>8.3f} {r['tokens_per_s']:>9.1f}")
PY
