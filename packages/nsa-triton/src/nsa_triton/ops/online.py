"""Online softmax shared by the branch kernels (float32 running max, denominator, accumulator).

`INTERP` switches on two workarounds for Triton 3.6's interpreter (TRITON_INTERPRET=1): loop
bounds that depend on the program id are walked with `while` (its `range` converts them with
`int()` of a 1-element array, an error under NumPy >= 2.4), and `dot` multiplies half-precision
operands after widening them to float32 (its bfloat16 `tl.dot` returns garbage). Widening is
exact for the products, which the GPU's matrix units also accumulate in float32. Compiled
kernels use `for` (so Triton can pipeline the loads) and the native dot.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl


def interpreted() -> bool:
    """Whether Triton runs its interpreter (TRITON_INTERPRET=1) instead of compiling for a GPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def dot(a, b, PREC: tl.constexpr, INTERP: tl.constexpr):
    """a @ b with float32 accumulation (see the module docstring for INTERP)."""
    if INTERP:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def online_step(q, k, v, valid, m, den, acc, scale, PREC: tl.constexpr, INTERP: tl.constexpr):
    """Fold one key tile (k [N, dk], v [N, dv], valid [M, N]) into (m, den, acc)."""
    s = dot(q, tl.trans(k), PREC, INTERP) * scale
    s = tl.where(valid, s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, 1))
    base = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp(s - base[:, None])
    alpha = tl.exp(m - base)
    den = den * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, PREC, INTERP)
    return m_new, den, acc


@triton.jit
def finish(m, den, acc):
    """(o, lse): o = acc / den, 0 over an empty key set, where lse is -inf."""
    nonempty = den > 0
    safe = tl.where(nonempty, den, 1.0)
    return acc / safe[:, None], tl.where(nonempty, m + tl.log(safe), float("-inf"))
