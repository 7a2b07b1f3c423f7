#!/usr/bin/env bash
# One device call: the torch decode step of cache layout v2 (nsa_torch.ops.decode.append +
# decode_attention) on a GPU. Checks that an eager step makes no host synchronisation
# (torch.cuda.set_sync_debug_mode("error")), captures the step in a CUDA graph over a fixed-capacity
# cache of sequences of different lengths, replays it and compares every replay with the same step
# run eagerly on a copy of the cache; then the torch conformance decode tests on cuda. Writes
# $OUT/device-cache.log and prints a short table last.
#
#   bash scripts/device-cache.sh
set -euo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/device-cache-out}"
mkdir -p "$OUT"
source scripts/device-install.sh

python3 - <<'PY' 2>&1 | tee "$OUT/device-cache.log"
import time

import torch
from nsa_spec import NSAConfig
from nsa_spec.contract import CACHE_ARRAYS
from nsa_spec.counters import tokens_read_exact
from nsa_torch.ops import decode

cfg = NSAConfig()
dev, dt = "cuda", torch.bfloat16
B, H, HQ, dk, dv, steps = 4, 2, 32, 128, 128, 40
lengths = [8000, 1, 31, 16384]
C = max(lengths) + steps + 8
torch.manual_seed(0)


def streams(S):
    return [torch.randn(1, S, H, d, device=dev, dtype=dt) for d in (dk, dv, dk, dv, dk, dv)]


cache = decode.join([decode.from_streams(*streams(S), cfg, capacity=C) for S in lengths], cfg)


def clone(c):
    return c.replace(**{n: getattr(c, n).clone() for n in CACHE_ARRAYS}, lengths=c.lengths.clone())


eager, warm = clone(cache), clone(cache)
q = torch.randn(B, 1, HQ, dk, device=dev, dtype=dt)
gates = torch.rand(B, 1, HQ, 3, device=dev, dtype=dt)
tokens = [torch.randn(B, 1, H, d, device=dev, dtype=dt) for d in (dk, dv, dk, dv, dk, dv)]
rows = []

torch.cuda.set_sync_debug_mode("error")
try:
    decode.decode_step(warm, q, *tokens, gates, cfg)  # also warms caches (overlap rows) before capture
    rows.append(("eager step, sync_debug_mode=error", "no host sync"))
except RuntimeError as e:
    rows.append(("eager step, sync_debug_mode=error", f"SYNC: {str(e).splitlines()[0][:80]}"))
torch.cuda.set_sync_debug_mode("default")
torch.cuda.synchronize()

side = torch.cuda.Stream()
side.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(side):
    decode.decode_step(clone(cache), q, *tokens, gates, cfg)
torch.cuda.current_stream().wait_stream(side)
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    result, _ = decode.decode_step(cache, q, *tokens, gates, cfg)
rows.append(("capture decode_step in a CUDA graph", "ok"))

worst, same_idx, same_reads = 0.0, True, True
for s in range(steps):
    for x in (q, gates, *tokens):
        x.copy_(torch.randn_like(x) if x is not gates else torch.rand_like(x))
    graph.replay()
    want, _ = decode.decode_step(eager, q.clone(), *(t.clone() for t in tokens), gates.clone(), cfg)
    worst = max(worst, (result.out.o.float() - want.out.o.float()).abs().max().item())
    same_idx &= torch.equal(result.out.indices, want.out.indices)
    same_reads &= torch.equal(result.reads, want.reads)
expected = torch.tensor([[tokens_read_exact(S + steps, cfg)] * H for S in lengths], device=dev)
rows.append(("replays vs eager: max |o| diff", f"{worst:.3e} (want 0)"))
rows.append(("replays vs eager: indices / reads equal", f"{same_idx} / {same_reads}"))
rows.append(("lengths after replays", f"{cache.lengths.tolist()} (want {[S + steps for S in lengths]})"))
rows.append(("reads == exact count per sequence", str(torch.equal(result.reads, expected))))


def timed(fn, n=50):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e3


spare = clone(eager)
spare.lengths.fill_(max(lengths))  # steady state, no overflow within the timing loop
attention_ms = timed(lambda: decode.decode_attention(spare, q, gates, cfg))
rows.append(("eager decode_attention ms (B=4, S<=16k)", f"{attention_ms:.3f}"))
rows.append(("graph replay ms (append + attention)", f"{timed(graph.replay, n=5):.3f}"))
print()
for name, value in rows:
    print(f"{name:<44} {value}")
PY
JAX_PLATFORMS=cpu python3 -m pytest --pyargs nsa_conformance.suite --nsa-backend torch --nsa-device cuda \
    -k "decode or table4 or unused_rows or select_sequences" -q 2>&1 | tail -3 | tee -a "$OUT/device-cache.log"
