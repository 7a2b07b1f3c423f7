"""Compression (Eq. 7) and the compressed branch, as `nsa_spec.reference.compress`.

Compressed token i is phi applied to raw tokens [i*d, i*d + l); query t sees those with
i*d + l <= t + 1. phi functions here take blocks [B, N, l, H, D] and a parameter dict (or None)
and return [B, N, H, D]; `nsa_torch.phi` wraps them as modules with learnable parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from nsa_spec.blocks import n_cmp
from nsa_spec.config import NSAConfig
from nsa_spec.errors import InvalidInputError
from nsa_spec.reference.compress import check_mlp_params
from torch import Tensor

from nsa_torch.ops.attention import attention_probs

Phi = Callable[[Tensor, Any], Tensor]


def phi_mean(blocks: Tensor, params: Any) -> Tensor:
    """Average pooling: blocks [B, N, l, H, D] -> [B, N, H, D]. `params` must be None."""
    if params is not None:
        raise InvalidInputError("phi 'mean' takes no parameters: phi_params must be None")
    return blocks.mean(dim=2)


def phi_mlp(blocks: Tensor, params: Any) -> Tensor:
    """The paper's MLP: `silu(flatten(x + pos) @ w1 + b1) @ w2 + b2`, shared by all heads.

    blocks [B, N, l, H, D]; params pos [l, D], w1 [l*D, hidden], b1 [hidden], w2 [hidden, D], b2 [D].
    """
    B, N, l, H, D = blocks.shape
    check_mlp_params(params, l, D)
    x = blocks + params["pos"][None, None, :, None, :]
    x = x.permute(0, 1, 3, 2, 4).reshape(B, N, H, l * D)
    h = torch.nn.functional.silu(x @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


PHIS: dict[str, Phi] = {"mean": phi_mean, "mlp": phi_mlp}


def register_phi(name: str, phi: Phi) -> None:
    """Make `phi(blocks [B, N, l, H, D], params) -> [B, N, H, D]` available to `compress` by name."""
    if name in PHIS:
        raise InvalidInputError(f"phi name must be new: phi={name!r} is already registered")
    PHIS[name] = phi


def cmp_blocks(x: Tensor, config: NSAConfig) -> Tensor:
    """The l-token windows phi reads: x [B, S, H, D] -> [B, N_cmp(S), l, H, D] (a strided view)."""
    B, S, H, D = x.shape
    if n_cmp(S, config) == 0:
        return x.new_zeros((B, 0, config.cmp_len, H, D))
    return x.unfold(1, config.cmp_len, config.cmp_stride).permute(0, 1, 4, 2, 3)


def compress(x: Tensor, config: NSAConfig, phi: str | Phi = "mean", params: Any = None) -> Tensor:
    """Compressed tokens of a raw stream: x [B, S, H, D] -> [B, N_cmp(S), H, D].

    `phi` is a name in `PHIS` or a callable with the same signature (an `nsa_torch.phi` module).
    """
    if isinstance(phi, str):
        if phi not in PHIS:
            raise InvalidInputError(f"phi must be one of {sorted(PHIS)}: phi={phi!r}")
        return PHIS[phi](cmp_blocks(x, config), params)
    return phi(cmp_blocks(x, config), params)


def cmp_visible(positions: Tensor, n_tokens: int, config: NSAConfig) -> Tensor:
    """Bool [C, N]: compressed token i is visible to the query at position t iff i*d + l <= t + 1."""
    i = torch.arange(n_tokens, device=positions.device)
    return i[None, :] * config.cmp_stride + config.cmp_len <= positions[:, None] + 1


def compressed_attention(
    q: Tensor, k_cmp: Tensor, v_cmp: Tensor, t0: int, config: NSAConfig, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The compressed branch for queries at positions t0 .. t0 + C - 1.

    q [B, C, H, G, dk]; k_cmp/v_cmp [B, H, N, d] (all compressed tokens of the sequence; only
    those visible to the chunk's last query are read). Returns o [B, C, H, G, dv],
    lse [B, C, H, G] and p [B, C, H, G, N_visible], the weights Eq. 8 reuses.
    """
    C = q.shape[1]
    n_vis = min(n_cmp(t0 + C, config), k_cmp.shape[2])
    k, v = k_cmp[:, :, :n_vis], v_cmp[:, :, :n_vis]
    positions = torch.arange(t0, t0 + C, device=q.device)
    allowed = cmp_visible(positions, n_vis, config)[None, :, None, None, :]
    p, lse = attention_probs(q, k, allowed, scale, may_be_empty=t0 + 1 < config.cmp_len)
    return torch.einsum("bchgs,bhsd->bchgd", p, v), lse, p
