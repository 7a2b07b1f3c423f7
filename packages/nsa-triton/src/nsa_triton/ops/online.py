"""Online softmax shared by the branch kernels (float32 running max, denominator, accumulator).

Loop bounds that depend on the program id are walked with `for` when compiled (so Triton can
pipeline the loads) and with `while` under the interpreter, whose `range` cannot take such a
bound with NumPy >= 2.4 (it converts a 1-element array to an int); `WHILE` picks the form.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def online_step(q, k, v, valid, m, den, acc, scale, PREC: tl.constexpr):
    """Fold one key tile (k [N, dk], v [N, dv], valid [M, N]) into (m, den, acc)."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
    s = tl.where(valid, s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, 1))
    base = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp(s - base[:, None])
    alpha = tl.exp(m - base)
    den = den * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return m_new, den, acc


@triton.jit
def finish(m, den, acc):
    """(o, lse): o = acc / den, 0 over an empty key set, where lse is -inf."""
    nonempty = den > 0
    safe = tl.where(nonempty, den, 1.0)
    return acc / safe[:, None], tl.where(nonempty, m + tl.log(safe), float("-inf"))
