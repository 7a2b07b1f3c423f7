"""The selected forward token by token (`select.selected_attention`) against block by block
(`selected_blockwise`), per group size, on a GPU.

HQ = 64 query heads, H = 64 / G kv heads, dk = dv = 128, bf16, the paper's blocks; indices from the
real pipeline (compressed branch, scores, top-n) on random inputs. For each G: both strategies'
times (`triton.testing.do_bench` medians), their agreement (relative difference of o, largest lse
difference) and TFLOP/s on the selected FLOPs (2 * T * HQ * n * l' * (dk + dv), causally clamped
blocks counted whole). Prints one table.

    python packages/nsa-triton/benchmarks/compare_selected.py [T] [G ...]
"""

from __future__ import annotations

import sys

import torch
import triton
from nsa_spec import NSAInputs
from nsa_spec.blocks import n_cmp, n_slc_blocks
from nsa_triton.ops.compress import compressed_attention, importance_scores
from nsa_triton.ops.select import selected_attention, top_n
from nsa_triton.ops.selected_blockwise import selected_attention_blockwise
from time_forward import CFG, HQ, D


def inputs(T: int, H: int) -> NSAInputs:
    def r(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16)

    N = n_cmp(T, CFG)
    gates = torch.ones(1, T, HQ, 3, device="cuda", dtype=torch.bfloat16)
    return NSAInputs(r(1, T, HQ, D), r(1, N, H, D), r(1, N, H, D), r(1, T, H, D), r(1, T, H, D),
                     r(1, T, H, D), r(1, T, H, D), gates)


def compare(T: int, G: int) -> dict[str, float]:
    x = inputs(T, HQ // G)
    scale = CFG.softmax_scale(D)
    lse_cmp = torch.empty((1, T, HQ), dtype=torch.float32, device="cuda")
    o_cmp = torch.empty((1, T, HQ, D), dtype=torch.float32, device="cuda")
    compressed_attention(x.q, x.k_cmp, x.v_cmp, o_cmp, lse_cmp, CFG, scale)
    idx = top_n(importance_scores(x.q, x.k_cmp, lse_cmp, n_slc_blocks(T, CFG), CFG, scale), CFG)
    outs = {}
    times = {}
    for name, stage in (("tokens", selected_attention), ("blocks", selected_attention_blockwise)):
        o = torch.empty((1, T, HQ, D), dtype=torch.float32, device="cuda")
        lse = torch.empty((1, T, HQ), dtype=torch.float32, device="cuda")

        def call(stage=stage, o=o, lse=lse):
            stage(x.q, x.k_slc, x.v_slc, idx, o, lse, CFG, scale)

        call()
        outs[name] = (o, lse)
        times[name] = triton.testing.do_bench(call, warmup=25, rep=200, return_mode="median")
    (o_t, l_t), (o_b, l_b) = outs["tokens"], outs["blocks"]
    flops = 2 * T * HQ * CFG.top_n * CFG.slc_len * 2 * D
    return {"tokens": times["tokens"], "blocks": times["blocks"],
            "o_rel": ((o_b - o_t).norm() / o_t.norm()).item(), "lse": (l_b - l_t).abs().max().item(),
            "tf_tokens": flops / times["tokens"] / 1e9, "tf_blocks": flops / times["blocks"] / 1e9}


def main() -> None:
    T = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
    groups = [int(g) for g in sys.argv[2:]] or [1, 2, 4, 8, 16]
    print(f"{torch.cuda.get_device_name()} triton {triton.__version__}; T={T}, HQ={HQ}, dk=dv={D}, bf16")
    print("| G | tokens ms | blocks ms | blocks speedup | TFLOP/s tokens / blocks | o rel diff | lse diff |")
    print("|---|---|---|---|---|---|---|")
    for G in groups:
        r = compare(T, G)
        print(f"| {G} | {r['tokens']:.2f} | {r['blocks']:.2f} | {r['tokens'] / r['blocks']:.2f}x | "
              f"{r['tf_tokens']:.0f} / {r['tf_blocks']:.0f} | {r['o_rel']:.1e} | {r['lse']:.1e} |",
              flush=True)


if __name__ == "__main__":
    main()
