"""Tile variants of backend "triton"'s backward kernels, timed per kernel on a GPU.

Paper shape (time_forward.make_inputs) at T tokens. For each variant of the dense branches' tiles
(compressed and window: `BackwardTiles` of the dK/dV and dQ kernels) and of the selected branch's
tile constants, every kernel's device time comes from the torch profiler (mean of REPS runs after
a warm-up), and each variant's gradients are compared with the default's (relative error; a
variant that computes something else is marked). Prints one table per branch and the fastest
variant per kernel. `--offline` instead compiles every variant for sm_90 on this machine and
prints ptxas's resource report (offline_resources.offline_compile), small T, CPU tensors.

    python packages/nsa-triton/benchmarks/sweep_backward.py [T] [--offline]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from nsa_triton.ops import select
from nsa_triton.ops.attention_grad import BackwardTiles
from nsa_triton.ops.combine import combine_backward
from nsa_triton.ops.compress import compressed_attention_backward
from nsa_triton.ops.window import window_attention_backward
from offline_resources import offline_compile
from time_forward import CFG, HQ, D, H

REPS = 5
DENSE = [BackwardTiles(r, k, w, s) for r, k, w, s in (
    (64, 64, 8, 2), (64, 64, 4, 2), (64, 64, 8, 3), (128, 64, 8, 2), (64, 128, 8, 2), (128, 32, 8, 2),
    (32, 128, 8, 2), (32, 64, 4, 2), (64, 32, 4, 2), (128, 64, 8, 3), (128, 32, 4, 3), (32, 64, 4, 3),
    (16, 64, 4, 3), (64, 32, 4, 3),
)]
SELECT = [  # overrides of nsa_triton.ops.select's backward constants
    {},
    {"BWD_DKDV_WARPS": 4},
    {"BWD_ROWS": 64},
    {"BWD_ROWS": 64, "BWD_DKDV_WARPS": 4},
    {"BWD_KEYS": 32},
    {"BWD_STAGES": 3},
    {"BWD_WARPS": 8},
]


def inputs(T: int, device: str):
    def r(*shape):
        return torch.randn(*shape, device=device, dtype=torch.bfloat16)

    from nsa_spec.blocks import n_cmp

    N = n_cmp(T, CFG)
    x = dict(q=r(1, T, HQ, D), k_cmp=r(1, N, H, D), v_cmp=r(1, N, H, D), k_slc=r(1, T, H, D),
             v_slc=r(1, T, H, D), k_win=r(1, T, H, D), v_win=r(1, T, H, D))
    gates = torch.sigmoid(r(1, T, HQ, 3).float())
    if device == "cuda":
        from nsa_spec import NSAInputs
        from nsa_triton.backend import TritonBackend

        out = TritonBackend().forward(NSAInputs(**x, gates=gates.to(torch.bfloat16)), CFG)
        lse, indices, branch_o = out.lse, out.indices, out.branch_o
    else:
        lse = torch.randn(1, T, HQ, 3)
        indices = torch.zeros((1, T, H, CFG.top_n), dtype=torch.int32)
        branch_o = torch.randn(1, T, HQ, 3, D)
    go = torch.randn_like(x["q"])
    if device == "cuda":
        _, delta = combine_backward(go, gates, branch_o)
    else:
        delta = torch.randn(1, T, HQ, 3)
    return x, gates, lse, indices, go, delta


def _profile(fn) -> dict[str, float]:
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(REPS):
            fn()
        torch.cuda.synchronize()
    times: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        total = e.device_time_total
        if total:
            times[e.key] += total / REPS / 1000.0
    return times


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("T", type=int, nargs="?", default=32768)
    parser.add_argument("--offline", action="store_true")
    a = parser.parse_args()
    device = "cpu" if a.offline else "cuda"
    x, gates, lse, indices, go, delta = inputs(a.T, device)
    scale = CFG.softmax_scale(D)
    q = x["q"]

    def dense(branch: str, tiles: BackwardTiles):
        fn = compressed_attention_backward if branch == "cmp" else window_attention_backward
        j = 0 if branch == "cmp" else 2
        k, v = x[f"k_{branch}"], x[f"v_{branch}"]

        def step():
            dq = torch.zeros(q.shape, dtype=torch.float32, device=device)
            dk, dv = fn(q, k, v, go, gates[..., j], lse[..., j], delta[..., j], dq, CFG, scale, tiles, tiles)
            return dq, dk, dv
        return step

    def selected(overrides: dict):
        def step():
            saved = {n: getattr(select, n) for n in overrides}
            for n, value in overrides.items():
                setattr(select, n, value)
            try:
                dq = torch.zeros(q.shape, dtype=torch.float32, device=device)
                dk, dv = select.selected_attention_backward(q, x["k_slc"], x["v_slc"], indices, go,
                                                            gates[..., 1], lse[..., 1], delta[..., 1], dq,
                                                            CFG, scale)
            finally:
                for n, value in saved.items():
                    setattr(select, n, value)
            return dq, dk, dv
        return step

    cases = [(b, str(t), dense(b, t)) for b in ("cmp", "win") for t in DENSE]
    cases += [("slc", str(o or "default"), selected(o)) for o in SELECT]
    if a.offline:
        for branch, name, step in cases:
            print(f"--- {branch} {name}")
            with offline_compile():
                try:
                    step()
                except Exception as e:  # a variant that does not compile is reported, not fatal
                    print(f"    fails: {type(e).__name__}: {str(e)[:200]}")
        return
    print(torch.cuda.get_device_name(), f"T={a.T}", flush=True)
    rows, reference = [], {}
    best: dict[str, tuple[float, str]] = {}
    for branch, name, step in cases:
        try:
            grads = step()
            times = _profile(step)
        except Exception as e:  # e.g. out of shared memory: reported, not fatal
            print(f"| {branch} | {name} | fails: {type(e).__name__}: {str(e)[:120]} |", flush=True)
            continue
        ref = reference.setdefault(branch, grads)
        err = max(_rel(g, r) for g, r in zip(grads, ref, strict=True))
        mine = {k: t for k, t in times.items() if k.startswith(f"_{branch}_bwd")}
        total = sum(times.values())
        for kname, t in mine.items():
            if err < 1e-2 and t < best.get(kname, (float("inf"), ""))[0]:
                best[kname] = (t, name)
        rows.append((branch, name, mine, total, err))
        print(f"| {branch} | {name} | " + " ".join(f"{k}={t:.2f}" for k, t in sorted(mine.items()))
              + f" | all kernels {total:.2f} ms | rel err vs default {err:.1e} |", flush=True)
    print("\nfastest variant per kernel (ms):")
    for kname, (t, name) in sorted(best.items()):
        print(f"  {kname}: {t:.2f} ms with {name}")


if __name__ == "__main__":
    main()
