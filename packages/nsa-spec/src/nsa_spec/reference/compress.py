"""Compression (Eq. 7) and the compressed branch.

Compressed token i is phi applied to raw tokens [i*d, i*d + l) of the cmp stream; a prefix of S
raw tokens has N_cmp(S) of them, and query t sees those with i*d + l <= t + 1.

phi variants, by name in `PHIS` (add your own with `register_phi`):
- `mean`: average over the l tokens of the block, no parameters.
- `mlp`: the paper's learnable MLP. With the block x [l, D] and parameters pos [l, D],
  w1 [l*D, hidden], b1 [hidden], w2 [hidden, D], b2 [D]:
  `phi(x) = silu(flatten(x + pos) @ w1 + b1) @ w2 + b2`, shared by all heads.
  Keys and values each have their own parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from nsa_spec.blocks import cmp_visible_mask, n_cmp
from nsa_spec.config import NSAConfig
from nsa_spec.errors import InvalidInputError
from nsa_spec.reference.attention import attention_probs

Phi = Callable[[Any, Any, Any], Any]


def phi_mean(blocks: Any, params: Any, xp: Any = np) -> Any:
    """Average pooling: blocks [B, N, l, H, D] -> [B, N, H, D]. `params` must be None."""
    if params is not None:
        raise InvalidInputError(
            f"phi 'mean' takes no parameters: phi_params must be None, got {type(params).__name__}"
        )
    return xp.mean(blocks, axis=2)


def check_mlp_params(params: Any, l: int, dim: int) -> None:
    """Raise `InvalidInputError` unless `params` fit phi 'mlp' for blocks of l tokens of width dim."""
    if params is None or not {"pos", "w1", "b1", "w2", "b2"} <= set(params):
        raise InvalidInputError(
            "phi 'mlp' needs phi_params with keys pos, w1, b1, w2, b2: "
            f"got {None if params is None else sorted(params)}"
        )
    if tuple(params["pos"].shape) != (l, dim) or params["w1"].shape[0] != l * dim:
        raise InvalidInputError(
            f"phi 'mlp' params must have pos [l, D] = [{l}, {dim}] and w1 [l*D, hidden]: "
            f"pos.shape={tuple(params['pos'].shape)}, w1.shape={tuple(params['w1'].shape)}"
        )


def phi_mlp(blocks: Any, params: Any, xp: Any = np) -> Any:
    """The paper's MLP with intra-block position embedding: [B, N, l, H, D] -> [B, N, H, D]."""
    B, N, l, H, D = blocks.shape
    check_mlp_params(params, l, D)
    x = blocks + params["pos"][None, None, :, None, :]
    x = xp.reshape(xp.transpose(x, (0, 1, 3, 2, 4)), (B, N, H, l * D))
    h = x @ params["w1"] + params["b1"]
    h = h / (1.0 + xp.exp(-h))  # silu
    return h @ params["w2"] + params["b2"]


PHIS: dict[str, Phi] = {"mean": phi_mean, "mlp": phi_mlp}


def register_phi(name: str, phi: Phi) -> None:
    """Make `phi(blocks [B, N, l, H, D], params, xp) -> [B, N, H, D]` available by `name`."""
    if name in PHIS:
        raise InvalidInputError(f"phi name must be new: phi={name!r} is already registered")
    PHIS[name] = phi


def split_phi_params(phi_params: Any) -> tuple[Any, Any]:
    """phi's key and value parameters from `phi_params` = {"k": ..., "v": ...}, or (None, None)."""
    if phi_params is None:
        return None, None
    if not isinstance(phi_params, Mapping) or not {"k", "v"} <= set(phi_params):
        got = sorted(phi_params) if isinstance(phi_params, Mapping) else type(phi_params).__name__
        raise InvalidInputError(
            f"phi_params must be None or a mapping with keys 'k' and 'v' (phi's key and value "
            f"parameters): phi_params={got}"
        )
    return phi_params["k"], phi_params["v"]


def init_mlp_params(rng: np.random.Generator, l: int, dim: int, hidden: int) -> dict[str, np.ndarray]:
    """Random float64 parameters for phi 'mlp' (for tests and examples)."""
    return {
        "pos": rng.standard_normal((l, dim)) * 0.1,
        "w1": rng.standard_normal((l * dim, hidden)) / np.sqrt(l * dim),
        "b1": np.zeros(hidden),
        "w2": rng.standard_normal((hidden, dim)) / np.sqrt(hidden),
        "b2": np.zeros(dim),
    }


def compress(x: Any, config: NSAConfig, phi: str = "mean", params: Any = None, xp: Any = np) -> Any:
    """Compressed tokens of a raw stream: x [B, S, H, D] -> [B, N_cmp(S), H, D]."""
    if phi not in PHIS:
        raise InvalidInputError(f"phi must be one of {sorted(PHIS)}: phi={phi!r}")
    B, S, H, D = x.shape
    N = n_cmp(S, config)
    starts = np.arange(N, dtype=np.int64)[:, None] * config.cmp_stride
    rows = starts + np.arange(config.cmp_len, dtype=np.int64)[None, :]  # [N, l]
    blocks = xp.reshape(x[:, rows.reshape(-1)], (B, N, config.cmp_len, H, D))
    return PHIS[phi](blocks, params, xp)


def compressed_attention(
    q: Any, k_cmp: Any, v_cmp: Any, config: NSAConfig, xp: Any = np
) -> tuple[Any, Any, Any]:
    """The compressed branch for one batch element.

    q [T, HQ, dk], k_cmp [N, H, dk], v_cmp [N, H, dv] -> o [T, HQ, dv], lse [T, HQ] and the
    softmax weights p [H, G, T, N] over visible compressed tokens, which Eq. 8 reuses.
    """
    T, _, dk = q.shape
    allowed = cmp_visible_mask(T, k_cmp.shape[0], config)[None]  # [1, T, N]
    p, lse = attention_probs(q, k_cmp, allowed, config.softmax_scale(dk), xp)
    o = xp.einsum("hgts,shd->thgd", p, v_cmp)
    return xp.reshape(o, (T, q.shape[1], v_cmp.shape[-1])), lse, p
