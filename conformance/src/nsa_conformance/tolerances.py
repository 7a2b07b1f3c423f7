"""Every tolerance of the suite, with its reason. No test loosens these locally.

A backend passes a comparison when, for a quantity X (the output, one branch's log-sum-exp, one
gradient, the block scores behind the selection),

    max |X_backend - X_oracle|  <=  k * max |X_naive - X_oracle|  +  floor(dtype) * max(1, max |X_oracle|)

where X_oracle is the float64 oracle run on exactly the inputs the backend saw (its dtype-rounded
arrays, upcast), and X_naive is the same reference computation done naively in the backend's
dtype (`lowprec.py`). Positions where the oracle is -inf (empty key sets) must be -inf; NaN
never passes.
"""

from __future__ import annotations

import numpy as np

# Output and log-sum-exp. FlashAttention's tests hold kernels to 2x the error of a reference run
# in the same low precision: a kernel exactly as careful as the naive computation sits at 1x, and
# 2x leaves room for a different but equally careful order of operations (tiled reductions,
# online softmax rescaling).
K_FORWARD = 2.0

# Gradients. The backward composes more rounded steps than the forward (dP = dO V^T, the
# softmax Jacobian P * (dP - rowsum(dO * O)), and reductions over T for dk/dv whose tile order
# differs from a naive sum), so a careful kernel drifts further from the naive computation.
K_BACKWARD = 3.0

# Block scores when deciding which selections are near-ties: the same factor as the forward.
K_SCORES = 2.0

# Floor, relative to the quantity's magnitude.
# float64: the naive computation *is* the oracle (its error is 0), so the floor alone must absorb
#   legitimate reordering of sums over up to ~10^4 terms and libm differences in exp/log
#   (~10^4 * 2.2e-16 ~ 2e-12, more where the softmax Jacobian cancels). 1e-10 is far above that
#   and far below any semantic bug (a leaked key, a wrong mask or scale moves results by >= 1e-6).
# low precision: one unit in the last place at the quantity's magnitude (eps * magnitude), for
#   quantities the naive computation happens to get exactly (one key of weight exactly 1, T = 1)
#   while a backend rounds once more (an extra cast of an intermediate costs up to half an ulp).
FLOOR = {
    "float64": 1e-10,
    "float32": float(np.finfo(np.float32).eps),
    "float16": float(np.finfo(np.float16).eps),
    "bfloat16": 2.0**-7,
}


def floor(dtype: str) -> float:
    """The relative floor for `dtype`."""
    return FLOOR[dtype]


def max_abs_error(got: np.ndarray, ref: np.ndarray) -> float:
    """Largest |got - ref| over the positions where ref is finite (0.0 if there are none)."""
    finite = np.isfinite(ref)
    if not finite.any():
        return 0.0
    return float(np.max(np.abs(got[finite] - ref[finite])))


def bound(naive_error: float, ref: np.ndarray, dtype: str, k: float) -> float:
    """The allowed error: k * naive error + floor * magnitude."""
    finite = ref[np.isfinite(ref)]
    magnitude = max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0
    return k * naive_error + floor(dtype) * magnitude
