"""Gated output (Eq. 5): o_t = g_cmp * o_cmp + g_slc * o_slc + g_win * o_win.

Gates are per token and query head, from an MLP on the layer input whose three logits go
through `sigmoid` (the paper's) or a `softmax` over the branches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nsa_spec.config import GATE_KINDS
from nsa_spec.errors import InvalidInputError


def gate_activation(logits: Any, kind: str, xp: Any = np) -> Any:
    """Gate values from logits [..., 3] (branch order cmp, slc, win)."""
    if kind == "sigmoid":
        return 1.0 / (1.0 + xp.exp(-logits))
    if kind == "softmax":
        shifted = logits - xp.max(logits, axis=-1, keepdims=True)
        e = xp.exp(shifted)
        return e / xp.sum(e, axis=-1, keepdims=True)
    raise InvalidInputError(f"gate must be one of {GATE_KINDS}: gate={kind!r}")


def combine(o_cmp: Any, o_slc: Any, o_win: Any, gates: Any) -> Any:
    """Mix branch outputs [..., HQ, dv] with gates [..., HQ, 3]."""
    return gates[..., 0:1] * o_cmp + gates[..., 1:2] * o_slc + gates[..., 2:3] * o_win
