"""Tile sizes shared by the kernel launchers."""

from __future__ import annotations

import torch
import triton


def padded(n: int) -> int:
    """The power of two >= max(n, 16) that a `tl.arange` / `tl.dot` dimension of size n needs."""
    return max(16, triton.next_power_of_2(n))


def dot_precision(dtype: torch.dtype) -> str:
    """float32 inputs multiply in IEEE float32 (tf32 would be far less careful than the naive
    float32 computation); half-precision inputs take the matrix units' own mode."""
    return "ieee" if dtype == torch.float32 else "tf32"


def group_tile(group: int, rows: int) -> tuple[int, int]:
    """(tokens per tile, padded group size) so that one tile holds about `rows` query rows, each
    row one (token, query head of the group) pair."""
    gp = max(1, triton.next_power_of_2(group))
    return max(1, rows // gp), gp
