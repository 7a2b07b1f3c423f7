"""Per-stage forward times of backend "triton" beside cuDNN dense causal attention, on a GPU.

"scores" and "top-n" are the two-pass form (a float32 score matrix [T, H, n_blocks] between them),
"running" the one-pass `running_top_n`, "selection" `importance_top_n`, which the forward runs (the
two-pass form in chunks of at most 256 MiB of scores for G >= 2, the one-pass form for G = 1).
Variants of the kernels' tiles (rows r, key tile bn, warps w, stages s) are timed beside the
defaults. Paper shape: bf16, B=1,
HQ=64, H=4, dk=dv=128, l=32, d=16, l'=64, n=16, w=512. Before timing, the outputs at the smallest
T are compared with backend "torch" (relative error of o, share of equal indices). Times are
`triton.testing.do_bench` medians on random inputs. Prints one table.

    python packages/nsa-triton/benchmarks/time_forward.py [T ...]
"""

from __future__ import annotations

import sys

import torch
import triton
from nsa_spec import NSAConfig, NSAInputs
from nsa_spec.blocks import n_cmp, n_slc_blocks
from nsa_torch.backend import TorchBackend
from nsa_triton.backend import TritonBackend
from nsa_triton.ops.compress import compressed_attention, importance_scores, importance_top_n, running_top_n
from nsa_triton.ops.select import selected_attention, top_n
from nsa_triton.ops.window import window_attention

CFG = NSAConfig(cmp_len=32, cmp_stride=16, slc_len=64, top_n=16, window=512)
HQ, H, D = 64, 4, 128


def make_inputs(T: int) -> NSAInputs:
    def r(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16)

    N = n_cmp(T, CFG)
    gates = torch.sigmoid(r(1, T, HQ, 3).float()).to(torch.bfloat16)
    return NSAInputs(r(1, T, HQ, D), r(1, N, H, D), r(1, N, H, D), r(1, T, H, D), r(1, T, H, D),
                     r(1, T, H, D), r(1, T, H, D), gates)


def stage_times(x: NSAInputs) -> dict[str, float]:
    T = x.q.shape[1]
    scale = CFG.softmax_scale(D)
    lse = torch.empty((1, T, HQ, 3), dtype=torch.float32, device="cuda")
    branch_o = torch.empty((1, T, HQ, 3, D), dtype=torch.float32, device="cuda")
    o_cmp, o_slc = branch_o[..., 0, :], branch_o[..., 1, :]
    o = torch.empty((1, T, HQ, D), dtype=torch.bfloat16, device="cuda")
    nb = n_slc_blocks(T, CFG)
    compressed_attention(x.q, x.k_cmp, x.v_cmp, o_cmp, lse[..., 0], CFG, scale)
    scores = importance_scores(x.q, x.k_cmp, lse[..., 0], nb, CFG, scale)
    idx = top_n(scores, CFG)
    same = [torch.equal(f(x.q, x.k_cmp, lse[..., 0], CFG, scale), idx)
            for f in (importance_top_n, running_top_n)]
    print(f"T={T}: indices equal to the two-pass ones: selection {same[0]}, running {same[1]}", flush=True)
    bench = {
        "cmp": lambda: compressed_attention(x.q, x.k_cmp, x.v_cmp, o_cmp, lse[..., 0], CFG, scale),
        "scores": lambda: importance_scores(x.q, x.k_cmp, lse[..., 0], nb, CFG, scale),
        "top-n": lambda: top_n(scores, CFG),
        "running": lambda: running_top_n(x.q, x.k_cmp, lse[..., 0], CFG, scale),
        "selection": lambda: importance_top_n(x.q, x.k_cmp, lse[..., 0], CFG, scale),
        "slc": lambda: selected_attention(x.q, x.k_slc, x.v_slc, idx, o_slc, lse[..., 1], CFG, scale),
        "win+comb": lambda: window_attention(x.q, x.k_win, x.v_win, x.gates, branch_o, o,
                                           lse[..., 2], CFG, scale),
        "total": lambda: TritonBackend().forward(x, CFG),
    }
    variants = {
        "scores r64w4": lambda: importance_scores(x.q, x.k_cmp, lse[..., 0], nb, CFG, scale, 64, 64, 4),
        "scores r256w8": lambda: importance_scores(x.q, x.k_cmp, lse[..., 0], nb, CFG, scale, 256, 64, 8),
        "scores r128w4": lambda: importance_scores(x.q, x.k_cmp, lse[..., 0], nb, CFG, scale, 128, 64, 4),
        "running r128w8": lambda: running_top_n(x.q, x.k_cmp, lse[..., 0], CFG, scale, 128, 64, 8),
        "top-n w2": lambda: top_n(scores, CFG, 2),
        "top-n w4": lambda: top_n(scores, CFG, 4),
        "cmp bn128w8": lambda: compressed_attention(x.q, x.k_cmp, x.v_cmp, o_cmp, lse[..., 0], CFG, scale,
                                                    128, 128, 8),
        "win bn128": lambda: window_attention(x.q, x.k_win, x.v_win, x.gates, branch_o, o, lse[..., 2],
                                            CFG, scale, 64, 128, 4),
        "slc k1w4s3": lambda: selected_attention(x.q, x.k_slc, x.v_slc, idx, o_slc, lse[..., 1], CFG, scale,
                                                 1, 4, 3),
    }
    bench.update(variants)
    return {k: triton.testing.do_bench(f, warmup=50, rep=300, return_mode="median") for k, f in bench.items()}


def cudnn_ms(x: NSAInputs) -> float:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = x.q.transpose(1, 2)
    k = x.k_win.transpose(1, 2).repeat_interleave(HQ // H, dim=1)
    v = x.v_win.transpose(1, 2).repeat_interleave(HQ // H, dim=1)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        f = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
        return triton.testing.do_bench(f, warmup=50, rep=300, return_mode="median")


def check_against_torch(T: int) -> str:
    x = make_inputs(T)
    got, want = TritonBackend().forward(x, CFG), TorchBackend().forward(x, CFG)
    err = ((got.o.float() - want.o.float()).norm() / want.o.float().norm()).item()
    same = (got.indices == want.indices).float().mean().item()
    return f"T={T}: |o - o_torch| / |o_torch| = {err:.2e}, indices equal: {100 * same:.3f}%"


def main(seqlens: list[int]) -> None:
    print(torch.cuda.get_device_name(), "triton", triton.__version__, "torch", torch.__version__)
    print(check_against_torch(min(seqlens)), flush=True)
    stages = ("cmp", "scores", "top-n", "running", "selection", "slc", "win+comb", "total")
    rows = []
    for T in seqlens:
        x = make_inputs(T)
        t = stage_times(x)
        dense = cudnn_ms(x)
        rows.append((T, t, dense))
        print(f"T={T}: " + " ".join(f"{k}={v:.2f}" for k, v in t.items()) + f" cudnn={dense:.2f}", flush=True)
        del x
        torch.cuda.empty_cache()
    print("\n| T | " + " | ".join(stages) + " | cuDNN dense | speedup |")
    print("|---" * (len(stages) + 3) + "|")
    for T, t, dense in rows:
        print(f"| {T} | " + " | ".join(f"{t[s]:.2f}" for s in stages)
              + f" | {dense:.2f} | {dense / t['total']:.2f}x |")
    print("(milliseconds, do_bench medians)")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [8192, 16384, 32768, 65536])
