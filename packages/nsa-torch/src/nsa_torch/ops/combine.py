"""Gated output (Eq. 5): o_t = g_cmp * o_cmp + g_slc * o_slc + g_win * o_win."""

from __future__ import annotations

import torch
from nsa_spec.config import GATE_KINDS
from nsa_spec.errors import InvalidInputError
from torch import Tensor


def gate_activation(logits: Tensor, kind: str) -> Tensor:
    """Gate values from logits [..., 3] (branch order cmp, slc, win): sigmoid or softmax."""
    if kind == "sigmoid":
        return torch.sigmoid(logits)
    if kind == "softmax":
        return torch.softmax(logits, dim=-1)
    raise InvalidInputError(f"gate must be one of {GATE_KINDS}: gate={kind!r}")


def combine(o_cmp: Tensor, o_slc: Tensor, o_win: Tensor, gates: Tensor) -> Tensor:
    """Mix branch outputs [..., dv] with gates [..., 3]."""
    return gates[..., 0:1] * o_cmp + gates[..., 1:2] * o_slc + gates[..., 2:3] * o_win
