"""Block selection (Eqs. 8-11) and the selected branch (Eq. 12), as `nsa_spec.reference.select`.

Importance: p_slc_t[j] = sum_i M[i, j] p_cmp_t[i] over the compressed tokens visible to t
(`nsa_spec.blocks.overlap_matrix`), summed over the G query heads of a group. Top-n: blocks 0,
c-1 and c are forced; the other slots go to the highest-scoring blocks among 0..c-1, the lower
index winning a tie (a stable sort, never `topk`); indices ascending, -1 padded. The selected
branch gathers each query's n blocks (n*l' keys), so memory grows with T*n*l', not T^2.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from nsa_spec.blocks import overlap_matrix
from nsa_spec.config import NSAConfig
from torch import Tensor

from nsa_torch.ops.attention import attend


@functools.lru_cache(maxsize=64)
def _overlap_rows(n_tokens: int, n_blocks: int, config: NSAConfig) -> tuple[np.ndarray, np.ndarray]:
    csr = overlap_matrix(n_tokens, n_blocks, config)
    counts = np.diff(csr.indptr)
    width = max(int(counts.max(initial=0)), 1)
    slot = np.arange(width)[None, :]
    take = csr.indptr[:-1, None] + slot
    present = slot < counts[:, None]
    take = np.where(present, take, 0)
    tokens = np.where(present, csr.indices[take] if csr.indices.size else 0, 0)
    weights = np.where(present, csr.weights[take] if csr.weights.size else 0.0, 0.0)
    return tokens, weights


@functools.lru_cache(maxsize=64)
def _device_overlap_rows(n_tokens: int, n_blocks: int, config: NSAConfig, device: torch.device,
                         dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    tokens, weights = _overlap_rows(n_tokens, n_blocks, config)
    with torch.inference_mode(False):  # ordinary tensors: usable under autograd after an inference call
        return torch.as_tensor(tokens, device=device), torch.as_tensor(weights, dtype=dtype, device=device)


def overlap_rows(n_tokens: int, n_blocks: int, config: NSAConfig, like: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 9 as padded rows: tokens [n_blocks, R] (long) and weights [n_blocks, R] (0 = padding).

    Row j lists the compressed tokens overlapping selection block j and M[i, j] for each. Kept
    per device, so a repeated call copies nothing from the host (a decode step in a CUDA graph).
    """
    return _device_overlap_rows(n_tokens, n_blocks, config, like.device, like.dtype)


def importance_scores(p_cmp: Tensor, rows: tuple[Tensor, Tensor]) -> Tensor:
    """Group-summed block scores (Eqs. 9-10): p_cmp [B, C, H, G, N] -> [B, C, H, n_blocks].

    `rows` comes from `overlap_rows` for at least N compressed tokens; tokens >= N (not visible to
    this chunk) get weight 0.
    """
    tokens, weights = rows
    n_vis = p_cmp.shape[-1]
    p = p_cmp.sum(dim=3)
    if n_vis == 0:
        return p.new_zeros((*p.shape[:-1], tokens.shape[0]))
    weights = torch.where(tokens < n_vis, weights, torch.zeros_like(weights))
    return (p[..., tokens.clamp(max=n_vis - 1)] * weights).sum(dim=-1)


def top_n(scores: Tensor, positions: Tensor, config: NSAConfig) -> Tensor:
    """Selected blocks (Eq. 11): scores [B, C, H, n_blocks], positions [C] (or [B, C], one row of
    positions per sequence) -> [B, C, H, n] long.

    Blocks after a query's current block get no slot whatever their score.
    """
    n_blocks = scores.shape[-1]
    n = config.top_n
    c = (positions // config.slc_len)[..., None, None]  # [C, 1, 1] or [B, C, 1, 1]
    j = torch.arange(n_blocks, device=scores.device)
    exists = j <= c
    forced = exists & ((j == 0) | (j == c) | (j == c - 1))
    inf = scores.new_full((), float("inf"))
    key = torch.where(forced, inf, torch.where(exists, scores, -inf))
    order = torch.sort(-key, dim=-1, stable=True).indices[..., :n]  # ties: lower j first
    rank = torch.arange(order.shape[-1], device=scores.device)
    chosen = torch.where(rank < torch.clamp(c + 1, max=n), order, n_blocks)
    chosen = torch.sort(chosen, dim=-1).values
    if chosen.shape[-1] < n:
        pad = chosen.new_full((*chosen.shape[:-1], n - chosen.shape[-1]), n_blocks)
        chosen = torch.cat([chosen, pad], dim=-1)
    return torch.where(chosen == n_blocks, -1, chosen)


def selected_keys(indices: Tensor, positions: Tensor, config: NSAConfig) -> tuple[Tensor, Tensor]:
    """Gather plan for each query's selected tokens.

    indices [B, C, H, n] (-1 padded), positions [C] or [B, C] -> (blocks to gather [B, C, H, n],
    clamped to >= 0, and allowed [B, C, H, n*l']: the token is in a selected block and at a
    position <= t).
    """
    l_slc = config.slc_len
    key_pos = (indices[..., None] * l_slc + torch.arange(l_slc, device=indices.device)).flatten(-2)
    valid = (indices >= 0).repeat_interleave(l_slc, dim=-1)
    return indices.clamp(min=0), valid & (key_pos <= positions[..., None, None])


def selection_blocks(x: Tensor, config: NSAConfig) -> Tensor:
    """x [B, S, H, d] -> [B * H * n_blocks, l', d]: whole selection blocks, zero-padded at the end."""
    B, S, H, D = x.shape
    n_blocks = -(-S // config.slc_len)
    x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, n_blocks * config.slc_len - S))
    return x.permute(0, 2, 1, 3).reshape(B * H * n_blocks, config.slc_len, D)


def gather_blocks(blocks: Tensor, block_ids: Tensor, n_blocks: int) -> Tensor:
    """blocks [B * H * n_blocks, l', d], block_ids [B, C, H, n] -> [B, C, H, n * l', d]."""
    B, C, H, n = block_ids.shape
    base = (torch.arange(B, device=block_ids.device)[:, None, None, None] * H
            + torch.arange(H, device=block_ids.device)[None, None, :, None]) * n_blocks
    rows = blocks.index_select(0, (base + block_ids).flatten())
    return rows.view(B, C, H, n * blocks.shape[1], blocks.shape[2])


def gather_tokens(x: Tensor, block_ids: Tensor, config: NSAConfig) -> Tensor:
    """Only the selected blocks' rows of x [B, S, H, d] (no copy of the rest; for decode).

    block_ids [B, C, H, n] -> [B, C, H, n * l', d]; rows past S are clamped to S - 1 (masked).
    """
    B, _, H, _ = block_ids.shape
    rows = block_ids[..., None] * config.slc_len + torch.arange(config.slc_len, device=x.device)
    rows = rows.flatten(-2).clamp(max=x.shape[1] - 1)
    b = torch.arange(B, device=x.device)[:, None, None, None]
    h = torch.arange(H, device=x.device)[None, None, :, None]
    return x[b, rows, h]


def selected_attention(
    q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """The selected branch over gathered keys: q [B, C, H, G, dk], k/v [B, C, H, n*l', d] (from
    `gather_blocks` or `gather_tokens`), allowed [B, C, H, n*l'] from `selected_keys`.

    Returns o [B, C, H, G, dv] and lse [B, C, H, G].
    """
    return attend(q, k.to(q.dtype), v.to(q.dtype), allowed[:, :, :, None, :], scale)
