"""The compiler's resource report of every Triton kernel of backend "triton", on a GPU.

Runs one forward and one backward at the paper shape (time_forward.make_inputs) at T tokens, then
lists each compiled kernel variant: registers per thread, spilled registers, shared memory, warps,
stages and its constexpr arguments. Costs no profiler time; read it before an ncu profile.

    python packages/nsa-triton/benchmarks/kernel_report.py [T]
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import nsa_triton.ops
import torch
import triton
from nsa_triton.backend import TritonBackend
from time_forward import CFG, make_inputs


def _jit_functions():
    for info in pkgutil.iter_modules(nsa_triton.ops.__path__):
        module = importlib.import_module(f"nsa_triton.ops.{info.name}")
        for name, obj in vars(module).items():
            fn = getattr(obj, "fn", obj)
            if isinstance(fn, triton.runtime.jit.JITFunction) and fn.__module__ == module.__name__:
                yield f"{info.name}.{name}", fn


def _compiled(fn):
    for cache in fn.device_caches.values():
        yield from cache[0].values()


def main(T: int) -> None:
    x = make_inputs(T)
    be = TritonBackend()
    out = be.forward(x, CFG)
    be.backward(x, CFG, out, torch.randn_like(x.q))
    torch.cuda.synchronize()
    print(torch.cuda.get_device_name(), "triton", triton.__version__, f"T={T}")
    print("| kernel | regs | spills | shared B | warps | stages | constexprs |")
    print("|---|---|---|---|---|---|---|")
    for name, fn in sorted(_jit_functions()):
        for k in _compiled(fn):
            k._init_handles()
            md = k.metadata
            consts = dict(getattr(k.src, "constants", {}))
            print(f"| {name} | {k.n_regs} | {k.n_spills} | {md.shared} | {md.num_warps} | "
                  f"{md.num_stages} | {consts} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 16384)
