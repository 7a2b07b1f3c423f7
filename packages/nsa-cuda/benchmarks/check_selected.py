"""Backend cuda's selected-branch kernel on a GPU, beside triton's: one table last.

1. Small hostile shapes in bfloat16, float16 and float32 against the float64 oracle
   (`nsa_spec.reference.select.selected_attention`), beside triton's selected kernel on the same
   inputs: the cuda error must be at most 2x triton's plus 1e-4. Outputs are written into
   NaN-filled strided views (as the composition's branch_o), so an unwritten element fails.
2. The paper shape (bf16, HQ=64, H=4, dk=dv=128, l'=64, n=16) at each T: cuda against triton
   (relative difference of o, max difference of lse), bitwise repeatability of cuda.
3. do_bench medians of the selected stage (triton, cuda), with TFLOP/s counted from the selected
   keys (clamped to <= t), cuDNN dense causal attention, and the whole forward of both backends.

    python packages/nsa-cuda/benchmarks/check_selected.py [--tokens 16384 65536] [--out DIR]
    python packages/nsa-cuda/benchmarks/check_selected.py --sanitize   # small cases, cuda kernel only
    python packages/nsa-cuda/benchmarks/check_selected.py --profile T  # one call of each kernel, for ncu
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from nsa_cuda.ops.select import selected_attention as cuda_selected
from nsa_spec import NSAConfig, NSAInputs
from nsa_spec.reference.select import selected_attention as oracle_selected
from nsa_spec.reference.select import top_n as oracle_top_n

SMALL = (  # (B, T, HQ, H, dk, dv, l', n): what each stresses
    (2, 101, 4, 2, 16, 8, 16, 4),  # G=2, smallest aligned dims, 7 blocks > n
    (1, 77, 8, 1, 16, 16, 32, 3),  # G=8, n = the forced blocks only
    (1, 45, 16, 1, 8, 4, 8, 16),  # G=16, dv=4 (scalar loads), l'=8 < one key tile, n > blocks
    (3, 61, 6, 3, 12, 20, 8, 5),  # G=2, dk=12 / dv=20 (scalar loads), B=3
    (1, 299, 2, 1, 32, 16, 64, 4),  # the paper's l'
    (1, 300, 16, 1, 192, 128, 64, 4),  # the paper's dk/dv: the 256 tile with 64 columns skipped
    (1, 257, 16, 2, 256, 256, 24, 6),  # the largest dims, l'=24 (not a multiple of 16)
    (2, 200, 3, 3, 64, 64, 16, 5),  # G=1
    (1, 130, 48, 3, 128, 128, 32, 4),  # G=16, H=3
    (1, 1, 4, 4, 64, 64, 64, 16),  # T=1
)
SANITIZE = (SMALL[2], SMALL[3], SMALL[6], (1, 200, 64, 4, 128, 128, 64, 3))
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
PAPER = dict(HQ=64, H=4, D=128, l=32, d=16, ls=64, n=16, w=512)
ORACLE_K, ORACLE_FLOOR = 2.0, 1e-4


def _config(ls: int, n: int) -> NSAConfig:
    block = min(8, ls)
    return NSAConfig(cmp_len=block, cmp_stride=block, slc_len=ls, top_n=n, window=16)


def _case_inputs(case: tuple[int, ...], dtype: torch.dtype, seed: int) -> dict:
    B, T, HQ, H, dk, dv, ls, n = case
    gen = np.random.default_rng(seed)
    cfg = _config(ls, n)
    blocks = -(-T // ls)
    idx = oracle_top_n(gen.random((B, T, H, blocks)), np.arange(T), cfg)  # [B, T, H, n], -1 padded
    arrays = {"q": 1.5 * gen.standard_normal((B, T, HQ, dk)), "k": gen.standard_normal((B, T, H, dk)),
              "v": gen.standard_normal((B, T, H, dv))}
    dev = {k: torch.tensor(a).to("cuda", dtype) for k, a in arrays.items()}
    return {"cfg": cfg, "idx": torch.tensor(idx, dtype=torch.int32, device="cuda"), **dev}


def _outputs(B: int, T: int, HQ: int, dv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NaN-filled strided views, laid out as the composition's branch_o[..., 1, :] and lse[..., 1]."""
    o = torch.full((B, T, HQ, 3, dv), float("nan"), device="cuda")[..., 1, :]
    lse = torch.full((B, T, HQ, 3), float("nan"), device="cuda")[..., 1]
    return o, lse


def _run(kernel, x: dict, B: int, T: int, HQ: int, dv: int) -> tuple[torch.Tensor, torch.Tensor]:
    o, lse = _outputs(B, T, HQ, dv)
    scale = x["cfg"].softmax_scale(x["q"].shape[-1])
    kernel(x["q"], x["k"], x["v"], x["idx"], o, lse, x["cfg"], scale)
    torch.cuda.synchronize()
    return o, lse


def _max_err(got: torch.Tensor, ref: np.ndarray) -> float:
    g = got.double().cpu().numpy()
    if np.isnan(g).any():
        return float("nan")
    return float(np.max(np.abs(g - ref), initial=0.0))


def oracle_checks() -> list[dict]:
    """Each small case and dtype: cuda's and triton's max errors against the float64 oracle."""
    from nsa_triton.ops.select import selected_attention as triton_selected

    rows = []
    for i, case in enumerate(SMALL):
        B, T, HQ, H, dk, dv, ls, n = case
        for name, dtype in DTYPES.items():
            x = _case_inputs(case, dtype, seed=i)
            q, k, v = (x[n_].double().cpu().numpy() for n_ in ("q", "k", "v"))
            idx = x["idx"].long().cpu().numpy()
            ref = [oracle_selected(q[b], k[b], v[b], idx[b], x["cfg"]) for b in range(B)]
            ref_o, ref_lse = np.stack([r[0] for r in ref]), np.stack([r[1] for r in ref])
            errs = {}
            for label, kernel in (("cuda", cuda_selected), ("triton", triton_selected)):
                o, lse = _run(kernel, x, B, T, HQ, dv)
                errs[label] = (_max_err(o, ref_o), _max_err(lse, ref_lse))
            ok = all(errs["cuda"][j] <= ORACLE_K * errs["triton"][j] + ORACLE_FLOOR for j in (0, 1))
            rows.append({"case": f"B{B}-T{T}-HQ{HQ}-H{H}-dk{dk}-dv{dv}-s{ls}n{n}", "dtype": name,
                         "cuda_o": errs["cuda"][0], "triton_o": errs["triton"][0],
                         "cuda_lse": errs["cuda"][1], "triton_lse": errs["triton"][1], "ok": ok})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _paper_config() -> NSAConfig:
    p = PAPER
    return NSAConfig(cmp_len=p["l"], cmp_stride=p["d"], slc_len=p["ls"], top_n=p["n"], window=p["w"])


def _paper_inputs(T: int) -> NSAInputs:
    from nsa_spec.blocks import n_cmp

    HQ, H, D = PAPER["HQ"], PAPER["H"], PAPER["D"]

    def r(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16)

    N = n_cmp(T, _paper_config())
    gates = torch.sigmoid(r(1, T, HQ, 3).float()).to(torch.bfloat16)
    return NSAInputs(r(1, T, HQ, D), r(1, N, H, D), r(1, N, H, D), r(1, T, H, D), r(1, T, H, D),
                     r(1, T, H, D), r(1, T, H, D), gates)


def selected_flops(idx: torch.Tensor, ls: int, group: int, dk: int, dv: int) -> float:
    """2 (dk + dv) flops per (token, query head, selected key <= t)."""
    t = torch.arange(idx.shape[1], device=idx.device)[None, :, None, None]
    keys = torch.where(idx >= 0, (t - idx.long() * ls + 1).clamp(0, ls), 0)
    return float(keys.sum().item()) * group * 2 * (dk + dv)


def _cudnn_ms(x: NSAInputs) -> tuple[float, float]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    HQ, H = PAPER["HQ"], PAPER["H"]
    q = x.q.transpose(1, 2)
    k = x.k_win.transpose(1, 2).repeat_interleave(HQ // H, dim=1)
    v = x.v_win.transpose(1, 2).repeat_interleave(HQ // H, dim=1)
    T, D = q.shape[2], q.shape[3]
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        ms = _bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))
    return ms, HQ * T * (T + 1) / 2 * 2 * (D + D)


def _bench(fn) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def paper_row(T: int) -> dict:
    """cuda against triton at the paper shape (o, lse), repeatability, and the times."""
    from nsa_cuda.backend import CudaBackend
    from nsa_triton.backend import TritonBackend
    from nsa_triton.ops.select import selected_attention as triton_selected
    from nsa_triton.ops.select import top_n

    cfg = _paper_config()
    HQ, H, D = PAPER["HQ"], PAPER["H"], PAPER["D"]
    x = _paper_inputs(T)
    idx = top_n(torch.rand(1, T, H, -(-T // cfg.slc_len), device="cuda"), cfg)  # valid Eq. 11 picks
    s = {"cfg": cfg, "idx": idx, "q": x.q, "k": x.k_slc, "v": x.v_slc}
    o_c, lse_c = _run(cuda_selected, s, 1, T, HQ, D)
    o_c2, lse_c2 = _run(cuda_selected, s, 1, T, HQ, D)
    o_t, lse_t = _run(triton_selected, s, 1, T, HQ, D)
    rel = ((o_c - o_t).norm() / o_t.norm()).item()
    dlse = (lse_c - lse_t).abs().max().item()
    repeat = bool(torch.equal(o_c, o_c2) and torch.equal(lse_c, lse_c2))
    finite = bool(o_c.isfinite().all() and lse_c.isfinite().all())
    scale = cfg.softmax_scale(D)
    o_buf, lse_buf = _outputs(1, T, HQ, D)
    slc_t = _bench(lambda: triton_selected(x.q, x.k_slc, x.v_slc, idx, o_buf, lse_buf, cfg, scale))
    slc_c = _bench(lambda: cuda_selected(x.q, x.k_slc, x.v_slc, idx, o_buf, lse_buf, cfg, scale))
    fwd_t = _bench(lambda: TritonBackend().forward(x, cfg))
    fwd_c = _bench(lambda: CudaBackend().forward(x, cfg))
    dense_ms, dense_flops = _cudnn_ms(x)
    flops = selected_flops(idx, cfg.slc_len, HQ // H, D, D)
    return {"T": T, "o_rel_diff": rel, "lse_max_diff": dlse, "repeatable": repeat,
            "ok": rel <= 1e-2 and dlse <= 1e-3 and repeat and finite,
            "slc_triton_ms": slc_t, "slc_cuda_ms": slc_c, "slc_triton_tflops": flops / slc_t / 1e9,
            "slc_cuda_tflops": flops / slc_c / 1e9, "cudnn_ms": dense_ms,
            "cudnn_tflops": dense_flops / dense_ms / 1e9, "fwd_triton_ms": fwd_t, "fwd_cuda_ms": fwd_c}


def paper_checks(tokens: list[int]) -> list[dict]:
    """`paper_row` at each T."""
    rows = []
    for T in tokens:
        rows.append(paper_row(T))
        print(json.dumps(rows[-1]), flush=True)
        torch.cuda.empty_cache()
    return rows


def sanitize() -> None:
    """The cuda kernel alone on a few small cases (for compute-sanitizer: no triton kernels)."""
    for i, case in enumerate(SANITIZE):
        B, T, HQ, dv = case[0], case[1], case[2], case[5]
        for dtype in (torch.bfloat16, torch.float32):
            x = _case_inputs(case, dtype, seed=100 + i)
            o, lse = _run(cuda_selected, x, B, T, HQ, dv)
            finite = bool(o.isfinite().all() and lse.isfinite().all())
            print(f"sanitize {case} {dtype}: finite={finite}", flush=True)


def profile(T: int) -> None:
    """The cuda and triton selected kernels once each at the paper shape, for ncu."""
    from nsa_triton.ops.select import selected_attention as triton_selected
    from nsa_triton.ops.select import top_n

    cfg = _paper_config()
    x = _paper_inputs(T)
    idx = top_n(torch.rand(1, T, PAPER["H"], -(-T // cfg.slc_len), device="cuda"), cfg)
    s = {"cfg": cfg, "idx": idx, "q": x.q, "k": x.k_slc, "v": x.v_slc}
    for kernel in (cuda_selected, triton_selected):
        _run(kernel, s, 1, T, PAPER["HQ"], PAPER["D"])


def table(oracle: list[dict], paper: list[dict]) -> str:
    bad = [r for r in oracle if not r["ok"]]
    worst = max(oracle, key=lambda r: r["cuda_o"] / (r["triton_o"] + 1e-12))
    lines = [f"oracle: {len(oracle) - len(bad)}/{len(oracle)} small cases ok (cuda error <= "
             f"{ORACLE_K} x triton's + {ORACLE_FLOOR}); largest cuda/triton o-error ratio "
             f"{worst['cuda_o']:.2e}/{worst['triton_o']:.2e} at {worst['case']} {worst['dtype']}"]
    lines += [f"  FAILED {r['case']} {r['dtype']}: o {r['cuda_o']:.2e} vs {r['triton_o']:.2e}, "
              f"lse {r['cuda_lse']:.2e} vs {r['triton_lse']:.2e}" for r in bad]
    lines += ["", "| T | cuda vs triton: o rel, lse max | repeatable | slc triton ms | slc cuda ms | "
              "speedup | slc TFLOP/s triton / cuda | cuDNN dense TFLOP/s | fwd triton ms | fwd cuda ms |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in paper:
        lines.append(
            f"| {r['T']} | {r['o_rel_diff']:.1e}, {r['lse_max_diff']:.1e} | {r['repeatable']} | "
            f"{r['slc_triton_ms']:.2f} | {r['slc_cuda_ms']:.2f} | "
            f"{r['slc_triton_ms'] / r['slc_cuda_ms']:.2f}x | "
            f"{r['slc_triton_tflops']:.0f} / {r['slc_cuda_tflops']:.0f} | {r['cudnn_tflops']:.0f} | "
            f"{r['fwd_triton_ms']:.2f} | {r['fwd_cuda_ms']:.2f} |")
    lines.append(f"({torch.cuda.get_device_name()}, torch {torch.__version__}; bf16, HQ=64, H=4, dk=dv=128, "
                 "l'=64, n=16; do_bench medians)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, nargs="*", default=[16384, 65536])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--sanitize", action="store_true")
    parser.add_argument("--profile", type=int, default=None, metavar="T")
    args = parser.parse_args()
    if args.sanitize:
        sanitize()
        return 0
    if args.profile is not None:
        profile(args.profile)
        return 0
    oracle = oracle_checks()
    paper = paper_checks(args.tokens)
    text = table(oracle, paper)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        results = json.dumps({"oracle": oracle, "paper": paper}, indent=1)
        (args.out / "check_selected.json").write_text(results)
        (args.out / "check_selected.md").write_text(text + "\n")
    print(text)
    return 0 if all(r["ok"] for r in oracle + paper) else 1


if __name__ == "__main__":
    sys.exit(main())
