"""phi as modules (NSA.md, Compression): blocks [B, N, l, H, D] -> compressed tokens [B, N, H, D].

`PHIS` maps a name to a factory `(block_len, dim, hidden) -> nn.Module`; `NSAAttention` builds
one for keys and one for values. Register your own with `register_phi`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from nsa_spec.errors import InvalidInputError
from torch import Tensor, nn

from nsa_torch.ops.compress import phi_mlp

PhiFactory = Callable[[int, int, int], nn.Module]


class MeanPhi(nn.Module):
    """Average pooling over the l tokens of a block; no parameters."""

    def forward(self, blocks: Tensor) -> Tensor:
        """blocks [B, N, l, H, D] -> [B, N, H, D]."""
        return blocks.mean(dim=2)


class MLPPhi(nn.Module):
    """The paper's MLP with a learnable intra-block position embedding (`ops.compress.phi_mlp`).

    `silu(flatten(x + pos) @ w1 + b1) @ w2 + b2`, shared by all heads.
    """

    def __init__(self, block_len: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(block_len, dim) * 0.02)
        self.w1 = nn.Parameter(torch.randn(block_len * dim, hidden) / math.sqrt(block_len * dim))
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.w2 = nn.Parameter(torch.randn(hidden, dim) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(dim))

    def forward(self, blocks: Tensor) -> Tensor:
        """blocks [B, N, l, H, D] -> [B, N, H, D]."""
        return phi_mlp(blocks, {"pos": self.pos, "w1": self.w1, "b1": self.b1, "w2": self.w2, "b2": self.b2})


PHIS: dict[str, PhiFactory] = {
    "mean": lambda block_len, dim, hidden: MeanPhi(),
    "mlp": MLPPhi,
}


def register_phi(name: str, factory: PhiFactory) -> None:
    """Make `factory(block_len, dim, hidden) -> module(blocks [B, N, l, H, D]) -> [B, N, H, D]`
    available to `NSAAttention(phi=name)`."""
    if name in PHIS:
        raise InvalidInputError(f"phi name must be new: phi={name!r} is already registered")
    PHIS[name] = factory


def make_phi(name: str, block_len: int, dim: int, hidden: int) -> nn.Module:
    """Build the phi module registered as `name`."""
    if name not in PHIS:
        raise InvalidInputError(f"phi must be one of {sorted(PHIS)}: phi={name!r}")
    return PHIS[name](block_len, dim, hidden)


def apply_module(blocks: Tensor, module: nn.Module) -> Tensor:
    """A phi for `ops.compress.compress` whose parameters are a phi module: calls it."""
    return module(blocks)
