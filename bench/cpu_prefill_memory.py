"""Peak RSS and time of one 32k-token NSA prefill forward on the CPU (backend "torch").

    python bench/cpu_prefill_memory.py [--tokens 32768] [--out bench/results/cpu]

The forward runs in a fresh child process (HQ=16, H=1, dk=dv=64, float32, the paper's block
sizes); the child reports its own peak resident set size (getrusage ru_maxrss) after creating
the inputs and after the forward. The result is written as JSON with the commit, torch version
and the machine's load average (the time is only comparable at equal load).
Not run by CI.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HQ, H, DK, DV = 16, 1, 64, 64


def child(tokens: int) -> None:
    """Run the forward and print {"rss_inputs", "rss_peak", "seconds"} as JSON."""
    import torch
    from nsa_spec import NSAConfig
    from nsa_torch import nsa_attention
    from nsa_torch.ops.compress import compress

    torch.manual_seed(0)
    config = NSAConfig()
    q = torch.randn(1, tokens, HQ, DK)
    k_raw, v_raw, k_slc, v_slc, k_win, v_win = (torch.randn(1, tokens, H, d) for d in (DK, DV) * 3)
    k_cmp, v_cmp = compress(k_raw, config), compress(v_raw, config)
    gates = torch.sigmoid(torch.randn(1, tokens, HQ, 3))
    rss_inputs = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    with torch.no_grad():
        o = nsa_attention(q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates, config, backend="torch")
    seconds = time.perf_counter() - start
    if not torch.isfinite(o).all():
        raise SystemExit("the forward produced non-finite values")
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "rss_inputs": rss_inputs, "rss_peak": rss_peak, "seconds": seconds, "load": os.getloadavg()[0]
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cpu")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.tokens)
        return
    run = subprocess.run(
        [sys.executable, __file__, "--child", "--tokens", str(args.tokens)],
        check=True, capture_output=True, text=True,
    )
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    import torch
    from nsa_spec import NSAConfig

    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    result = {
        "workload": "cpu-prefill-forward",
        "backend": "torch",
        "commit": commit,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "shape": {"B": 1, "T": args.tokens, "HQ": HQ, "H": H, "dk": DK, "dv": DV, "dtype": "float32"},
        "config": NSAConfig().__dict__,
        "peak_rss_bytes": measured["rss_peak"],
        "peak_rss_gib": round(measured["rss_peak"] / 2**30, 3),
        "rss_after_inputs_bytes": measured["rss_inputs"],
        "forward_seconds": round(measured["seconds"], 3),
        "load_average_1min_after": round(measured["load"], 2),
        "note": "time is wall clock on a shared 2-core machine; see load_average_1min_after",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"prefill-memory-T{args.tokens}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"peak RSS {result['peak_rss_gib']} GiB, forward {result['forward_seconds']} s -> {path}")


if __name__ == "__main__":
    main()
