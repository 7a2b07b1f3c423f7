"""Rotary position embedding, half-split ("rotate_half") layout, at absolute positions."""

from __future__ import annotations

import torch
from nsa_spec.errors import InvalidInputError
from torch import Tensor


def rotate_half(x: Tensor) -> Tensor:
    """[x1, x2] -> [-x2, x1] over the last dim split in halves."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, positions: Tensor, base: float) -> Tensor:
    """Rotate x [B, T, H, D] at absolute `positions` [T] (or [B, T]): x*cos + rotate_half(x)*sin.

    Channel i and i + D/2 rotate together at frequency base^(-2i/D). Angles are computed in
    float64 so long positions keep their precision, then cast to x's dtype.
    """
    D = x.shape[-1]
    if D % 2:
        raise InvalidInputError(f"RoPE needs an even head dim: head_dim={D}")
    inv_freq = base ** (-torch.arange(0, D, 2, dtype=torch.float64, device=x.device) / D)
    angles = positions.to(torch.float64)[..., None] * inv_freq  # [T, D/2] or [B, T, D/2]
    angles = torch.cat([angles, angles], dim=-1).reshape(-1, x.shape[1], 1, D)  # [B or 1, T, 1, D]
    return x * angles.cos().to(x.dtype) + rotate_half(x) * angles.sin().to(x.dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [B, T, H, D] by precomputed cos, sin [B or 1, T, D] (the same half-split layout),
    e.g. a host model's scaled RoPE: x*cos + rotate_half(x)*sin."""
    B, T, _, D = x.shape
    for name, table in (("cos", cos), ("sin", sin)):
        if table.dim() != 3 or table.shape[0] not in (1, B) or tuple(table.shape[1:]) != (T, D):
            raise InvalidInputError(
                f"rotary {name} must have shape [B or 1, T, head_dim] = [{B} or 1, {T}, {D}]: "
                f"{name}.shape={tuple(table.shape)}"
            )
    return x * cos[:, :, None].to(x.dtype) + rotate_half(x) * sin[:, :, None].to(x.dtype)
