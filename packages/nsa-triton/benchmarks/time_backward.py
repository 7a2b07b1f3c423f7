"""Per-stage backward times of backend "triton" beside cuDNN dense causal attention, on a GPU.

Paper shape (bf16, B=1, HQ=64, H=4, dk=dv=128, l=32, d=16, l'=64, n=16, w=512), random inputs,
`triton.testing.do_bench` medians. Stages: the combine (gate gradient and rowsum(dO * O)), the
compressed, selected (index inversion included) and window backwards, the whole backward and
forward, and cuDNN's forward and forward+backward. At the smallest T the gradients are first
compared with backend "torch" (relative error per array). Also reports the peak memory of one
forward+backward through `nsa_attention`. Prints one table.

    python packages/nsa-triton/benchmarks/time_backward.py [T ...]
"""

from __future__ import annotations

import sys

import torch
import triton
from nsa_spec.contract import ARRAYS, NSAInputs
from nsa_torch import nsa_attention
from nsa_torch.backend import TorchBackend
from nsa_triton.backend import TritonBackend
from nsa_triton.ops.combine import combine_backward
from nsa_triton.ops.compress import compressed_attention_backward
from nsa_triton.ops.select import selected_attention_backward
from nsa_triton.ops.window import window_attention_backward
from time_forward import CFG, HQ, H, cudnn_ms, make_inputs


def _bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def stage_times(x: NSAInputs) -> dict[str, float]:
    be = TritonBackend()
    out = be.forward(x, CFG)
    go = torch.randn_like(x.q)
    scale = CFG.softmax_scale(x.q.shape[3])
    g, lse = x.gates, out.lse
    _, delta = combine_backward(go, g, out.branch_o)
    dq = torch.zeros(x.q.shape, dtype=torch.float32, device="cuda")
    return {
        "combine": _bench(lambda: combine_backward(go, g, out.branch_o)),
        "cmp": _bench(lambda: compressed_attention_backward(
            x.q, x.k_cmp, x.v_cmp, go, g[..., 0], lse[..., 0], delta[..., 0], dq, CFG, scale)),
        "slc": _bench(lambda: selected_attention_backward(
            x.q, x.k_slc, x.v_slc, out.indices, go, g[..., 1], lse[..., 1], delta[..., 1], dq, CFG, scale)),
        "win": _bench(lambda: window_attention_backward(
            x.q, x.k_win, x.v_win, go, g[..., 2], lse[..., 2], delta[..., 2], dq, CFG, scale)),
        "backward": _bench(lambda: be.backward(x, CFG, out, go)),
        "forward": _bench(lambda: be.forward(x, CFG)),
    }


def cudnn_fwdbwd_ms(x: NSAInputs) -> float:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = x.q.transpose(1, 2).detach().requires_grad_()
    k = x.k_win.transpose(1, 2).repeat_interleave(HQ // H, dim=1).detach().requires_grad_()
    v = x.v_win.transpose(1, 2).repeat_interleave(HQ // H, dim=1).detach().requires_grad_()
    go = torch.randn_like(q)

    def step():
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.autograd.grad(o, (q, k, v), go)

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return _bench(step)


def peak_gib(x: NSAInputs) -> float:
    """Peak memory of one forward+backward through the functional API, inputs included."""
    leaves = [a.detach().requires_grad_() for a in x.arrays().values()]
    torch.cuda.reset_peak_memory_stats()
    nsa_attention(*leaves, CFG, backend="triton").backward(torch.randn_like(x.q))
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def check_against_torch(T: int) -> str:
    x = make_inputs(T)
    be = TritonBackend()
    out = be.forward(x, CFG)
    go = torch.randn_like(x.q)
    got = be.backward(x, CFG, out, go)
    want = TorchBackend().backward(x, CFG, out, go)
    errs = []
    for n in ARRAYS:
        a, b = getattr(got, n).float(), getattr(want, n).float()
        errs.append(f"{n} {((a - b).norm() / b.norm()).item():.1e}")
    return f"T={T} relative error vs backend torch: " + ", ".join(errs)


def main(seqlens: list[int]) -> None:
    print(torch.cuda.get_device_name(), "triton", triton.__version__, "torch", torch.__version__)
    print(check_against_torch(min(seqlens)), flush=True)
    stages = ("combine", "cmp", "slc", "win", "backward", "forward")
    rows = []
    for T in seqlens:
        x = make_inputs(T)
        t = stage_times(x)
        dense_f, dense_fb = cudnn_ms(x), cudnn_fwdbwd_ms(x)
        peak = peak_gib(x)
        rows.append((T, t, dense_f, dense_fb, peak))
        print(f"T={T}: " + " ".join(f"{k}={v:.2f}" for k, v in t.items())
              + f" cudnn_f={dense_f:.2f} cudnn_fb={dense_fb:.2f} peak={peak:.1f}GiB", flush=True)
        del x
        torch.cuda.empty_cache()
    print("\n| T | " + " | ".join(stages) + " | fwd+bwd | cuDNN fwd+bwd | speedup | peak GiB |")
    print("|---" * (len(stages) + 5) + "|")
    for T, t, _dense_f, dense_fb, peak in rows:
        total = t["forward"] + t["backward"]
        print(f"| {T} | " + " | ".join(f"{t[s]:.2f}" for s in stages)
              + f" | {total:.2f} | {dense_fb:.2f} | {dense_fb / total:.2f}x | {peak:.1f} |")
    print("(milliseconds, do_bench medians; stage times exclude the forward)")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [8192, 32768, 65536])
