"""Block index math (NSA.md, Compression and Top-n): counts, visibility, selection blocks, Eq. 9.

Positions are 0-indexed. Compressed token i summarises raw tokens [i*d, i*d + l); selection
block j holds raw tokens [j*l', (j+1)*l').
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nsa_spec.config import NSAConfig


def n_cmp(length: int, config: NSAConfig) -> int:
    """Compressed tokens of a prefix of `length` raw tokens: 0 if length < l else (length-l)//d + 1."""
    l, d = config.cmp_len, config.cmp_stride
    return 0 if length < l else (length - l) // d + 1


def n_cmp_visible(t: np.ndarray | int, config: NSAConfig) -> np.ndarray:
    """Compressed tokens visible to query t: those with i*d + l <= t + 1, i.e. N_cmp(t + 1)."""
    l, d = config.cmp_len, config.cmp_stride
    t = np.asarray(t, dtype=np.int64)
    return np.where(t + 1 < l, 0, (t + 1 - l) // d + 1)


def cmp_visible_mask(n_queries: int, n_tokens: int, config: NSAConfig) -> np.ndarray:
    """Bool [T, N]: compressed token i is visible to query t iff i*d + l <= t + 1."""
    t = np.arange(n_queries)[:, None]
    i = np.arange(n_tokens)[None, :]
    return i * config.cmp_stride + config.cmp_len <= t + 1


def n_slc_blocks(length: int, config: NSAConfig) -> int:
    """Selection blocks that hold at least one of `length` raw tokens: ceil(length / l')."""
    return -(-length // config.slc_len)


def current_block(t: np.ndarray | int, config: NSAConfig) -> np.ndarray:
    """The selection block holding query position t: floor(t / l')."""
    return np.asarray(t, dtype=np.int64) // config.slc_len


def forced_blocks(t: int, config: NSAConfig) -> np.ndarray:
    """Blocks every query t selects (NSA.md, Top-n step 1): {0, c-1, c} that exist, ascending."""
    c = int(current_block(t, config))
    return np.unique(np.array([0, max(c - 1, 0), c], dtype=np.int64))


@dataclass(frozen=True)
class OverlapCSR:
    """Eq. 9 mapping in CSR form, one row per selection block j.

    Row j lists the compressed tokens i overlapping block j (`indices[indptr[j]:indptr[j+1]]`)
    with weights M[i, j] = |[i*d, i*d+l) ∩ [j*l', (j+1)*l')| / d.
    """

    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray
    n_tokens: int

    def to_dense(self) -> np.ndarray:
        """M as a dense float64 [n_tokens, n_blocks] matrix, so p_slc = p_cmp @ M."""
        n_blocks = len(self.indptr) - 1
        dense = np.zeros((self.n_tokens, n_blocks))
        for j in range(n_blocks):
            lo, hi = self.indptr[j], self.indptr[j + 1]
            dense[self.indices[lo:hi], j] = self.weights[lo:hi]
        return dense


def overlap_matrix(n_tokens: int, n_blocks: int, config: NSAConfig) -> OverlapCSR:
    """Eq. 9 token-overlap weights between `n_tokens` compressed tokens and `n_blocks` blocks.

    For (l, d, l') = (32, 16, 64) block j collects tokens 4j-1 .. 4j+3 with weights 1, 2, 2, 2, 1
    (those that exist). NSA.md explains why this reading replaces the paper's printed formula.
    """
    l, d, l_slc = config.cmp_len, config.cmp_stride, config.slc_len
    starts = np.arange(n_tokens, dtype=np.int64) * d
    indptr, indices, weights = [0], [], []
    for j in range(n_blocks):
        lo, hi = j * l_slc, (j + 1) * l_slc
        overlap = np.minimum(starts + l, hi) - np.maximum(starts, lo)
        hit = np.nonzero(overlap > 0)[0]
        indices.extend(hit.tolist())
        weights.extend((overlap[hit] / d).tolist())
        indptr.append(len(indices))
    return OverlapCSR(
        indptr=np.asarray(indptr, dtype=np.int64),
        indices=np.asarray(indices, dtype=np.int64),
        weights=np.asarray(weights, dtype=np.float64),
        n_tokens=n_tokens,
    )


def cmp_cu_seqlens(cu_seqlens: np.ndarray, config: NSAConfig) -> np.ndarray:
    """Offsets of each packed sequence's compressed tokens, given the raw `cu_seqlens`."""
    lengths = np.diff(np.asarray(cu_seqlens, dtype=np.int64))
    counts = [n_cmp(int(s), config) for s in lengths]
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
