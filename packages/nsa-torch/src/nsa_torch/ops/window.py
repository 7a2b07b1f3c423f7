"""The sliding-window branch: query t attends to keys max(0, t - w + 1) .. t of the win stream.

Banded: a chunk of C queries reads only the C + w - 1 keys its windows can reach.
"""

from __future__ import annotations

import torch
from nsa_spec.config import NSAConfig
from torch import Tensor

from nsa_torch.ops.attention import attend


def window_mask(positions: Tensor, key_positions: Tensor, config: NSAConfig) -> Tensor:
    """Bool [C, S]: key s is allowed for query t iff t - w < s <= t."""
    t, s = positions[:, None], key_positions[None, :]
    return (s <= t) & (s > t - config.window)


def window_attention(
    q: Tensor, k_win: Tensor, v_win: Tensor, t0: int, config: NSAConfig, scale: float
) -> tuple[Tensor, Tensor]:
    """The sliding branch for queries at t0 .. t0 + C - 1: q [B, C, H, G, dk], k/v [B, H, T, d]."""
    C = q.shape[1]
    lo, hi = max(0, t0 - config.window + 1), t0 + C
    positions = torch.arange(t0, hi, device=q.device)
    allowed = window_mask(positions, torch.arange(lo, hi, device=q.device), config)
    k, v = k_win[:, :, lo:hi], v_win[:, :, lo:hi]
    return attend(q, k, v, allowed[None, :, None, None, :], scale, may_be_empty=False)
