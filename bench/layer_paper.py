"""The whole layer: `NSAAttention` against a dense attention layer of the same shape, and where
the NSA layer's time goes.

    python -m bench.layer_paper [--seqlens 16384,65536] [--d-model 8192] [--heads 64] [--kv-heads 4]
                                [--device cuda] [--out DIR]

The dense layer has the same q and output projections, one k and one v projection (the NSA layer
has one per branch, a gate MLP and phi), the same RoPE, and causal SDPA (cuDNN on CUDA, the math
kernel on the CPU) with K/V expanded to the query heads. Modes: forward, and forward+backward
(the gradient of sum(y * dy) to x and every parameter). The NSA layer's forward is also timed in
parts: streams (projections of q and every branch's k/v, RoPE, the gate MLP), phi (the compressed
tokens), attention (`nsa_attention`, default dispatch) and the output projection. bf16 on CUDA
(`triton.testing.do_bench` medians), float32 on the CPU (mean of a few calls, for tests). The report
goes to DIR/layer-paper-<date>.txt (default bench/results/<gpu>/) and to stdout.
"""

from __future__ import annotations

import argparse
import datetime
import time
from collections.abc import Callable
from pathlib import Path

import torch
from nsa_spec import NSAConfig
from nsa_torch import NSAAttention, nsa_attention
from nsa_torch.rope import apply_rope
from torch import Tensor, nn

from bench.results import commit, slug

PAPER = NSAConfig(cmp_len=32, cmp_stride=16, slc_len=64, top_n=16, window=512)
ROPE_BASE = 10000.0  # NSAAttention's default


class DenseLayer(nn.Module):
    """Dense causal GQA attention with NSAAttention's projections, RoPE and output projection."""

    def __init__(self, d_model: int, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(d_model, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        pos = torch.arange(T, device=x.device)
        G = self.heads // self.kv_heads
        H, D = self.kv_heads, self.head_dim
        q = apply_rope(self.q_proj(x).view(B, T, self.heads, D), pos, ROPE_BASE).transpose(1, 2)
        k = apply_rope(self.k_proj(x).view(B, T, H, D), pos, ROPE_BASE).transpose(1, 2)
        v = self.v_proj(x).view(B, T, H, D).transpose(1, 2)
        o = _sdpa(q, k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1))
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.heads * self.head_dim))


def _sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = SDPBackend.CUDNN_ATTENTION if q.is_cuda else SDPBackend.MATH
    with sdpa_kernel(backend):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def _ms(fn: Callable[[], object], device: str) -> float:
    """Milliseconds per call: do_bench's median on CUDA, the mean of 3 calls after one on the CPU."""
    if device == "cuda":
        import triton

        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    fn()
    start = time.perf_counter()
    for _ in range(3):
        fn()
    return (time.perf_counter() - start) / 3 * 1e3


def _fwdbwd(layer: nn.Module, x: Tensor, dy: Tensor) -> Callable[[], None]:
    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        (layer(x) * dy).sum().backward()

    return step


def parts(layer: NSAAttention, x: Tensor, device: str) -> dict[str, float]:
    """Milliseconds of the NSA layer's forward parts (no grad)."""
    B, T, _ = x.shape
    pos = torch.arange(T, device=x.device)
    with torch.no_grad():
        q, kv, gates = layer.streams(x, pos)
        (k_raw, v_raw), (k_slc, v_slc), (k_win, v_win) = kv["cmp"], kv["slc"], kv["win"]

        def phi() -> tuple[Tensor, Tensor]:
            return layer._compress(layer.phi_k, k_raw, None), layer._compress(layer.phi_v, v_raw, None)

        k_cmp, v_cmp = phi()

        def attend() -> Tensor:
            return nsa_attention(q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates, layer.config,
                                 backend=layer.backend)

        flat = attend().reshape(B, T, -1)
        return {"streams": _ms(lambda: layer.streams(x, pos), device), "phi": _ms(phi, device),
                "attention": _ms(attend, device), "o_proj": _ms(lambda: layer.o_proj(flat), device)}


def measure(T: int, d_model: int, heads: int, kv_heads: int, device: str,
            config: NSAConfig = PAPER) -> dict[str, float]:
    """Forward and forward+backward of both layers at T tokens, and the NSA layer's parts (ms)."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    nsa = NSAAttention(d_model, heads, kv_heads, config=config).to(device, dtype)
    dense = DenseLayer(d_model, heads, kv_heads, d_model // heads).to(device, dtype)
    x = torch.randn(1, T, d_model, device=device, dtype=dtype)
    dy = torch.randn_like(x)
    out = {}
    for name, layer in (("nsa", nsa), ("dense", dense)):
        with torch.no_grad():
            out[f"{name} fwd"] = _ms(lambda layer=layer: layer(x), device)
        xg = x.detach().requires_grad_()
        out[f"{name} fwdbwd"] = _ms(_fwdbwd(layer, xg, dy), device)
    out.update({f"nsa {k}": v for k, v in parts(nsa, x, device).items()})
    return out


def report(seqlens: list[int], d_model: int, heads: int, kv_heads: int, device: str,
           config: NSAConfig = PAPER) -> str:
    """The report text: one table row per T."""
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    lines = [f"{gpu}, torch {torch.__version__}, commit {commit()}, {datetime.date.today()}; "
             f"d_model={d_model}, heads={heads}, kv heads={kv_heads}, {config}",
             "", "| T | NSA fwd | dense fwd | fwd speedup | NSA fwd+bwd | dense fwd+bwd | fwd+bwd speedup | "
             "NSA fwd parts: streams / phi / attention / o_proj |",
             "|---|---|---|---|---|---|---|---|"]
    for T in seqlens:
        m = measure(T, d_model, heads, kv_heads, device, config)
        split = " / ".join(f"{m[f'nsa {p}']:.2f}" for p in ("streams", "phi", "attention", "o_proj"))
        lines.append(
            f"| {T} | {m['nsa fwd']:.2f} | {m['dense fwd']:.2f} | {m['dense fwd'] / m['nsa fwd']:.2f}x | "
            f"{m['nsa fwdbwd']:.2f} | {m['dense fwdbwd']:.2f} | {m['dense fwdbwd'] / m['nsa fwdbwd']:.2f}x | "
            f"{split} |")
    lines.append("(milliseconds)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqlens", default="16384,65536")
    parser.add_argument("--d-model", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=64)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = report([int(t) for t in args.seqlens.split(",")], args.d_model, args.heads, args.kv_heads,
                  args.device)
    print(text)
    gpu = slug(torch.cuda.get_device_name()) if args.device == "cuda" else "cpu"
    out = args.out or Path(__file__).parent / "results" / gpu
    out.mkdir(parents=True, exist_ok=True)
    (out / f"layer-paper-{datetime.date.today()}.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
