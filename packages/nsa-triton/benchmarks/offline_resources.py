"""Registers, spills and shared memory of backend "triton"'s kernels for a GPU this machine lacks.

Runs one forward and one backward through the launchers on CPU tensors with every kernel launch
intercepted: each launch's arguments become a signature (pointer dtypes, 16-divisible pointers
and integers marked as the JIT marks them, ints equal to 1 specialised), the kernel is compiled
for the target (default sm_90) with Triton's bundled ptxas, and ptxas's own report is printed
(outputs of intercepted launches are left unwritten: only the resources are meaningful).

    python packages/nsa-triton/benchmarks/offline_resources.py [T] [--arch 90] [--group G] [--dim D]
        [--dtype bfloat16|float16|float32] [--decode B] [--decode B]

With `--decode B` it compiles the decode step instead: B sequences in a layout-v2 cache of
capacity T.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import tempfile

import torch
import triton
from nsa_spec import NSAConfig, NSAInputs
from nsa_spec.blocks import n_cmp
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction, MockTensor

CFG = NSAConfig(cmp_len=32, cmp_stride=16, slc_len=64, top_n=16, window=512)
_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32",
           torch.int64: "i64", torch.bool: "i1", torch.int8: "i8"}
_LAUNCH = {"num_warps", "num_stages", "num_ctas", "maxnreg"}


def _signature(fn: JITFunction, args: tuple, kwargs: dict):
    bound = dict(zip(fn.arg_names, args, strict=False))
    bound |= {k: v for k, v in kwargs.items() if k not in _LAUNCH}
    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        value = bound.get(p.name, p.default)
        if p.is_constexpr:
            signature[p.name], constexprs[p.name] = "constexpr", value
        elif isinstance(value, (torch.Tensor, MockTensor)):  # MockTensor: a dtype standing for a tensor
            signature[p.name] = "*" + _DTYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[p.name] = "i1"
        elif isinstance(value, int):
            if value == 1:
                signature[p.name], constexprs[p.name] = "constexpr", 1
                continue
            signature[p.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[p.name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: argument {p.name}={value!r} has no signature type")
    return signature, constexprs, attrs


def _ptxas_report(ptx: str, arch: int) -> str:
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    suffix = "a" if arch >= 90 else ""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    out = subprocess.run([ptxas, f"-arch=sm_{arch}{suffix}", "-v", f.name, "-o", os.devnull],
                         capture_output=True, text=True).stderr
    os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", out)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    stack = re.search(r"(\d+) bytes stack frame", out)
    return (f"regs {regs.group(1) if regs else '?'}, spill stores/loads "
            f"{spill.group(1) + '/' + spill.group(2) if spill else '?'} B, "
            f"stack {stack.group(1) if stack else '?'} B")


SMEM_LIMITS = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448}
"""Shared memory a program may opt into, by sm_ architecture (CUDA's per-block opt-in limits)."""


@contextlib.contextmanager
def offline_compile(arch: int = 90):
    """Within it, every triton kernel launch is compiled for sm_`arch` and its resources printed
    once per variant (kernel, constexprs) instead of running, marked OVER where its shared memory
    exceeds the architecture's limit. The launchers' shared-memory fit (`tiles.first_fit`) plans
    against that limit and compiles its candidates the same way."""
    from nsa_triton.ops import tiles

    seen: set[str] = set()
    compiled_for: dict[str, object] = {}
    run, limit = JITFunction.run, tiles.smem_limit

    def intercept(self, *args, grid, warmup, **kwargs):
        signature, constexprs, attrs = _signature(self, args, kwargs)
        options = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
        key = f"{self.__name__} {sorted((k, v) for k, v in constexprs.items() if k != 'INTERP')} {options}"
        if key not in compiled_for:
            compiled_for[key] = triton.compile(
                ASTSource(fn=self, signature=signature, constexprs=constexprs, attrs=attrs),
                target=GPUTarget("cuda", arch, 32), options=options)
        compiled = compiled_for[key]
        if warmup or key in seen:
            return compiled
        seen.add(key)
        md = compiled.metadata
        over = " OVER" if md.shared > SMEM_LIMITS[arch] else ""
        print(f"{self.__name__}: {_ptxas_report(compiled.asm['ptx'], arch)}, shared {md.shared} B{over}, "
              f"warps {md.num_warps}, stages {md.num_stages}", flush=True)

    JITFunction.run = intercept
    tiles.smem_limit = lambda device: SMEM_LIMITS[arch]
    try:
        yield
    finally:
        JITFunction.run, tiles.smem_limit = run, limit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("T", type=int, nargs="?", default=2048)
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--decode", type=int, metavar="B", default=0)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    a = parser.parse_args()
    from nsa_triton.backend import TritonBackend

    T, HQ, D = a.T, 64, a.dim
    H = HQ // a.group

    def r(*shape):
        return torch.randn(*shape, dtype=getattr(torch, a.dtype))

    N = n_cmp(T, CFG)
    if a.decode:
        from nsa_triton.ops.decode import decode_attention

        B, w = a.decode, CFG.window
        with offline_compile(a.arch):
            decode_attention(r(B, HQ, D), torch.sigmoid(r(B, HQ, 3)), r(B, N, H, D), r(B, N, H, D),
                             r(B, T, H, D), r(B, T, H, D), r(B, w, H, D), r(B, w, H, D),
                             torch.full((B,), T, dtype=torch.int64), CFG, D**-0.5)
        return
    x = NSAInputs(r(1, T, HQ, D), r(1, N, H, D), r(1, N, H, D), r(1, T, H, D), r(1, T, H, D),
                  r(1, T, H, D), r(1, T, H, D), torch.sigmoid(r(1, T, HQ, 3)))
    be = TritonBackend()
    with offline_compile(a.arch):
        out = be.forward(x, CFG)
        out = type(out)(o=out.o, lse=out.lse, indices=torch.zeros(out.indices.shape, dtype=torch.int32),
                        branch_o=out.branch_o)
        be.backward(x, CFG, out, torch.randn_like(x.q))


if __name__ == "__main__":
    main()
