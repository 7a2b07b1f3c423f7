"""Forward and backward of backend "triton" at conformance sizes, for `compute-sanitizer`.

    compute-sanitizer --tool memcheck python packages/nsa-triton/benchmarks/sanitize.py
    compute-sanitizer --tool racecheck python packages/nsa-triton/benchmarks/sanitize.py

Cases: G = 1 and 16, dk != dv, T not a multiple of any block, T < l, and packed sequences.
"""

from __future__ import annotations

import torch
from nsa_spec import NSAConfig, NSAInputs
from nsa_spec.blocks import cmp_cu_seqlens, n_cmp
from nsa_triton.backend import TritonBackend

CFG = NSAConfig(cmp_len=32, cmp_stride=16, slc_len=64, top_n=4, window=96)
CASES = (  # (T, HQ, H, dk, dv, cu_seqlens)
    (301, 4, 4, 64, 64, None),
    (301, 16, 1, 192, 128, None),
    (20, 8, 2, 64, 32, None),
    (333, 8, 2, 128, 128, (0, 17, 200, 333)),
)


def run(T: int, HQ: int, H: int, dk: int, dv: int, cu: tuple[int, ...] | None) -> None:
    def r(*shape):
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16)

    N = n_cmp(T, CFG) if cu is None else int(cmp_cu_seqlens(torch.tensor(cu).numpy(), CFG)[-1])
    gates = torch.sigmoid(r(1, T, HQ, 3).float()).to(torch.bfloat16)
    x = NSAInputs(r(1, T, HQ, dk), r(1, N, H, dk), r(1, N, H, dv), r(1, T, H, dk), r(1, T, H, dv),
                  r(1, T, H, dk), r(1, T, H, dv), gates,
                  None if cu is None else torch.tensor(cu, device="cuda"))
    be = TritonBackend()
    out = be.forward(x, CFG)
    grads = be.backward(x, CFG, out, torch.randn_like(out.o))
    torch.cuda.synchronize()
    finite = all(torch.isfinite(g).all() for g in vars(grads).values())
    print(f"T={T} HQ={HQ} H={H} dk={dk} dv={dv} cu={cu}: finite={finite}", flush=True)


if __name__ == "__main__":
    for case in CASES:
        run(*case)
