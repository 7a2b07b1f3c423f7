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


def overlap_rows(n_tokens: int, n_blocks: int, config: NSAConfig, like: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 9 as padded rows: tokens [n_blocks, R] (long) and weights [n_blocks, R] (0 = padding).

    Row j lists the compressed tokens overlapping selection block j and M[i, j] for each.
    """
    tokens, weights = _overlap_rows(n_tokens, n_blocks, config)
    return (
        torch.as_tensor(tokens, device=like.device),
        torch.as_tensor(weights, dtype=like.dtype, device=like.device),
    )


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
    """Selected blocks (Eq. 11): scores [B, C, H, n_blocks], positions [C] -> [B, C, H, n] long.

    Blocks after a query's current block get no slot whatever their score.
    """
    n_blocks = scores.shape[-1]
    n = config.top_n
    c = (positions // config.slc_len)[:, None, None]  # [C, 1, 1]
    j = torch.arange(n_blocks, device=scores.device)
    exists = j <= c
    forced = exists & ((j == 0) | (j == c) | (j == c - 1))
    inf = torch.tensor(float("inf"), dtype=scores.dtype, device=scores.device)
    key = torch.where(forced, inf, torch.where(exists, scores, -inf))
    order = torch.sort(-key, dim=-1, stable=True).indices[..., :n]  # ties: lower j first
    rank = torch.arange(order.shape[-1], device=scores.device)
    chosen = torch.where(rank < torch.clamp(c + 1, max=n), order, n_blocks)
    chosen = torch.sort(chosen, dim=-1).values
    if chosen.shape[-1] < n:
        pad = chosen.new_full((*chosen.shape[:-1], n - chosen.shape[-1]), n_blocks)
        chosen = torch.cat([chosen, pad], dim=-1)
    return torch.where(chosen == n_blocks, -1, chosen)


def selected_rows(
    indices: Tensor, positions: Tensor, n_keys: int, config: NSAConfig
) -> tuple[Tensor, Tensor]:
    """Gather plan for each query's selected tokens.

    indices [B, C, H, n] (-1 padded), positions [C] -> (rows to gather [B, C, H, n*l'], clamped
    into 0 .. n_keys - 1, and allowed [B, C, H, n*l']: the row is in a selected block and <= t).
    """
    l_slc = config.slc_len
    rows = (indices[..., None] * l_slc + torch.arange(l_slc, device=indices.device)).flatten(-2)
    valid = (indices >= 0).repeat_interleave(l_slc, dim=-1)
    allowed = valid & (rows <= positions[None, :, None, None])
    return rows.clamp(0, n_keys - 1), allowed


def selected_attention(
    q: Tensor, k_slc: Tensor, v_slc: Tensor, indices: Tensor, positions: Tensor,
    config: NSAConfig, scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """The selected branch: q [B, C, H, G, dk], k/v [B, S, H, d], indices [B, C, H, n].

    Only the rows of the selected blocks are gathered (n*l' per query and kv head), then cast to
    q's dtype. Returns o [B, C, H, G, dv], lse [B, C, H, G] and allowed [B, C, H, n*l'] (the
    gathered rows that entered the softmax; decode counts its reads from it).
    """
    B, _, H, _ = indices.shape
    rows, allowed = selected_rows(indices, positions, k_slc.shape[1], config)
    b = torch.arange(B, device=q.device)[:, None, None, None]
    h = torch.arange(H, device=q.device)[None, None, :, None]
    k = k_slc[b, rows, h].to(q.dtype)  # [B, C, H, n*l', dk]
    v = v_slc[b, rows, h].to(q.dtype)  # [B, C, H, n*l', dv]
    o, lse = attend(q, k, v, allowed[:, :, :, None, :], scale)
    return o, lse, allowed
