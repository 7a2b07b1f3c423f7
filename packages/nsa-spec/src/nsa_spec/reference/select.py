"""Block selection (Eqs. 8-11) and the selected branch (Eq. 12).

Importance: p_slc_t[j] = sum_i M[i, j] p_cmp_t[i] over the compressed tokens visible to t
(`blocks.overlap_matrix`), then summed over the G query heads of a group.
Top-n for query t with current block c = floor(t / l'): blocks 0, c-1 and c are forced; the
remaining slots go to the highest-scoring other blocks among 0..c-1, the lower index winning a
tie; with fewer than n blocks all are taken. Indices are returned ascending, -1 padded.
Selected branch: attention over the selected blocks' tokens of the slc stream, clamped to <= t.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nsa_spec.blocks import overlap_matrix
from nsa_spec.config import NSAConfig
from nsa_spec.reference.attention import attend


def importance_scores(p_cmp: Any, n_blocks: int, config: NSAConfig, xp: Any = np) -> Any:
    """Group-summed block scores: p_cmp [H, G, T, N] -> [T, H, n_blocks] (Eqs. 9-10)."""
    M = overlap_matrix(p_cmp.shape[-1], n_blocks, config).to_dense()  # [N, n_blocks]
    p_slc = xp.einsum("hgtn,nj->thj", p_cmp, xp.asarray(M))
    return p_slc


def top_n(scores: np.ndarray, positions: np.ndarray, config: NSAConfig) -> np.ndarray:
    """Selected blocks (Eq. 11): scores [..., T, H, n_blocks], positions [T] -> [..., T, H, n].

    Blocks after a query's current block get no slot whatever their score.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n_blocks = scores.shape[-1]
    c = np.asarray(positions, dtype=np.int64)[:, None, None] // config.slc_len  # [T, 1, 1]
    j = np.arange(n_blocks)
    exists = j <= c
    forced = exists & ((j == 0) | (j == c) | (j == c - 1))
    key = np.where(forced, np.inf, np.where(exists, scores, -np.inf))
    order = np.argsort(-key, axis=-1, kind="stable")[..., : config.top_n]  # ties: lower j first
    rank = np.arange(order.shape[-1])
    chosen = np.where(rank < np.minimum(c + 1, config.top_n), order, n_blocks)
    chosen = np.sort(chosen, axis=-1)
    pad = config.top_n - chosen.shape[-1]
    chosen = np.concatenate([chosen, np.full((*chosen.shape[:-1], pad), n_blocks)], axis=-1)
    return np.where(chosen == n_blocks, -1, chosen).astype(np.int64)


def is_valid_top_n(
    indices: np.ndarray, scores: np.ndarray, positions: np.ndarray, config: NSAConfig, tol: float
) -> np.ndarray:
    """Per (…, t, h): does `indices` hold a valid top-n of `scores` up to `tol`?

    Valid means: the forced blocks are in, every existing block is in when there are at most n,
    each chosen block exists and appears once, and every chosen unforced score is >= every
    unchosen existing score minus `tol`. Used where near-ties make the exact set dtype-dependent.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n_blocks = scores.shape[-1]
    c = np.asarray(positions, dtype=np.int64)[:, None, None] // config.slc_len
    j = np.arange(n_blocks)
    exists = j <= c
    forced = exists & ((j == 0) | (j == c) | (j == c - 1))
    member = np.zeros(scores.shape, dtype=bool)
    idx = np.asarray(indices)
    in_range = (idx >= 0) & (idx < n_blocks)
    valid_entries = np.all((idx == -1) | in_range, axis=-1)
    for slot in range(idx.shape[-1]):
        col = idx[..., slot]
        hit = (j == col[..., None]) & (col[..., None] >= 0)
        valid_entries &= ~np.any(member & hit, axis=-1)  # no duplicates
        member |= hit
    count_ok = member.sum(-1) == np.minimum(c[..., 0] + 1, config.top_n)
    valid = valid_entries & count_ok & np.all(member | ~forced, axis=-1)
    valid &= ~np.any(member & ~exists, axis=-1)
    chosen_free = np.where(member & ~forced, scores, np.inf).min(-1)
    unchosen = np.where(~member & exists, scores, -np.inf).max(-1)
    return valid & (chosen_free >= unchosen - tol)


def selected_mask(indices: np.ndarray, n_keys: int, config: NSAConfig) -> np.ndarray:
    """Bool [H, T, S]: key s is allowed for (t, h) iff its block is selected and s <= t.

    indices [T, H, n] (-1 padded); query t is at position t, keys at positions 0..S-1.
    """
    T = indices.shape[0]
    key_block = np.arange(n_keys) // config.slc_len  # [S]
    hit = np.any(indices[:, :, :, None] == key_block[None, None, None, :], axis=2)  # [T, H, S]
    causal = np.arange(n_keys)[None, :] <= np.arange(T)[:, None]  # [T, S]
    return np.transpose(hit & causal[:, None, :], (1, 0, 2))


def selected_attention(
    q: Any, k_slc: Any, v_slc: Any, indices: np.ndarray, config: NSAConfig, xp: Any = np
) -> tuple[Any, Any]:
    """The selected branch for one batch element: q [T, HQ, dk], k/v [T, H, .], indices [T, H, n]."""
    allowed = selected_mask(np.asarray(indices), k_slc.shape[0], config)
    return attend(q, k_slc, v_slc, allowed, config.softmax_scale(q.shape[-1]), xp)

