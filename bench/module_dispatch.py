"""Which backend `NSAAttention` runs by default on this GPU, and what that costs.

    python -m bench.module_dispatch [--out DIR]

For each layer shape (bf16, no grad, paper blocks) it prints `nsa_torch.explain` for the layer's
attention call, times the layer's forward with default dispatch and with each backend forced
(`triton.testing.do_bench` median; the eager backend with CUDA events over 3 calls), and writes
the report to DIR/module-dispatch-<date>.txt (default bench/results/<gpu>/).
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch
import triton
from nsa_spec import NSAConfig
from nsa_torch import NSAAttention, explain

from bench.results import commit

SHAPES = (  # (d_model, heads, kv heads, T)
    (2048, 16, 1, 16384),
    (8192, 64, 4, 65536),
)


def _ms(fn, slow: bool) -> float:
    if not slow:
        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 3


def report() -> str:
    """The report text for every shape."""
    lines = [f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
             f"commit {commit()}, {datetime.date.today()}"]
    for d_model, heads, kv_heads, T in SHAPES:
        torch.manual_seed(0)
        layer = NSAAttention(d_model, heads, kv_heads, config=NSAConfig()).to("cuda", torch.bfloat16)
        x = torch.randn(1, T, d_model, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            q, kv, _ = layer.streams(x, torch.arange(T, device="cuda"))
            lines.append(f"\nNSAAttention(d_model={d_model}, num_heads={heads}, num_kv_heads={kv_heads}), "
                         f"x [1, {T}, {d_model}] bf16, no grad")
            lines.append(str(explain(q, *kv["slc"], layer.config, ops=("forward",))))
            for backend in (None, "triton", "torch"):
                layer.backend = backend
                ms = _ms(lambda layer=layer, x=x: layer(x), slow=backend == "torch")
                lines.append(f"  layer forward, backend={backend or 'default'}: {ms:.2f} ms")
    return "\n".join(lines)


def main() -> None:
    """Print the report and write it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    text = report()
    print(text)
    gpu = torch.cuda.get_device_name().lower().replace(" ", "-")
    out = args.out or Path("bench/results") / gpu
    out.mkdir(parents=True, exist_ok=True)
    (out / f"module-dispatch-{datetime.date.today()}.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
