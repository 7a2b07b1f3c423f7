"""FLOP and byte model of NSA and of dense causal attention, stage by stage.

Conventions (the same for NSA and dense, so ratios compare like with like):

- FLOPs: a multiply-add is 2 FLOPs. Counted: the matrix products of every attention
  (q.k over each allowed (query, key) pair, p.v likewise), the Eq. 9 mapping of compressed
  probabilities to blocks, the Eq. 10 group sum and the gated combine. Not counted, as in
  FlashAttention's count: exponentials, maxima, the softmax division and top-n comparisons.
- Pairs are exact: query t of a causal attention sees t + 1 keys, so dense attention has
  T(T+1)/2 pairs per head, not T^2/2.
- Selection scores: p_cmp has T x N_cmp entries per head and cannot be kept in memory at
  long T, so scores recompute q.k~ over the visible compressed tokens (2 dk per pair, the lse
  coming from the compressed branch) before the mapping; this is what a fused kernel does.
- Backward of one attention: recompute q.k (2 dk), dP = dO.v (2 dv), dV += P^T dO (2 dv),
  dQ += dS k (2 dk), dK += dS^T q (2 dk): 6 dk + 4 dv per pair, 2.5x the forward at dk = dv.
  Selection is discrete: no backward through the scores.
- Bytes: the least a fused kernel moves through device memory, each input read once and each
  output written once. Outputs are what the contract returns: o, the log-sum-exp (float32, one
  per head for dense, one per head and branch for NSA) and the selected indices (int32).
  Per-stage bytes are those of the stage as a standalone kernel; `total_bytes` is the fused
  minimum of the whole call, which is what TB/s figures are computed from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nsa_spec.config import NSAConfig

LSE_BYTES = 4  # float32
INDEX_BYTES = 4  # int32

NSA_STAGES = ("cmp", "scores", "slc", "win", "combine")
STAGE_NAMES = {
    "cmp": "compression-branch attention",
    "scores": "selection scores (q.k~, Eq. 9 mapping, group sum)",
    "slc": "selected attention",
    "win": "window attention",
    "combine": "gates and combine",
    "dense": "dense causal attention",
}


@dataclass(frozen=True)
class Blocks:
    """Block sizes the model needs: l, d, l', n, w (w = 0: no window branch)."""

    l: int
    d: int
    l_slc: int
    n: int
    w: int

    @classmethod
    def from_config(cls, config: NSAConfig) -> Blocks:
        """The sizes of an `NSAConfig`."""
        return cls(config.cmp_len, config.cmp_stride, config.slc_len, config.top_n, config.window)


@dataclass(frozen=True)
class Shape:
    """One attention call: B sequences of T queries, HQ query heads over H key/value heads."""

    B: int
    T: int
    HQ: int
    H: int
    dk: int
    dv: int
    itemsize: int

    @property
    def G(self) -> int:
        """Group size HQ / H."""
        return self.HQ // self.H


@dataclass(frozen=True)
class Cost:
    """FLOPs and bytes per stage, and the fused minimum bytes of the whole call."""

    flops: dict[str, int]
    bytes: dict[str, int]
    total_bytes: int

    @property
    def total_flops(self) -> int:
        """All stages together."""
        return sum(self.flops.values())

    def __add__(self, other: Cost) -> Cost:
        keys = list(dict.fromkeys([*self.flops, *other.flops]))
        return Cost(
            flops={k: self.flops.get(k, 0) + other.flops.get(k, 0) for k in keys},
            bytes={k: self.bytes.get(k, 0) + other.bytes.get(k, 0) for k in keys},
            total_bytes=self.total_bytes + other.total_bytes,
        )


# ---- pair counts: allowed (query, key) pairs per batch element and per query head ----------


def _queries(T: int) -> np.ndarray:
    return np.arange(T, dtype=np.int64)


def n_cmp(length: np.ndarray | int, b: Blocks) -> np.ndarray:
    """Compressed tokens of a `length`-token prefix: 0 if length < l else (length - l)//d + 1."""
    length = np.asarray(length, dtype=np.int64)
    return np.where(length < b.l, 0, (length - b.l) // b.d + 1)


def selected_tokens(length: np.ndarray | int, l_slc: int, n: int) -> np.ndarray:
    """Tokens in the n selected blocks of the last query of a `length`-token prefix.

    Every block but the current one is full and the current one is always selected, so the
    count does not depend on which blocks win: `length` if at most n blocks exist, else
    (n - 1) full blocks plus the filled part of the current one.
    """
    length = np.asarray(length, dtype=np.int64)
    blocks = -(-length // l_slc)
    fill = length - (blocks - 1) * l_slc
    return np.where(blocks <= n, length, (n - 1) * l_slc + fill)


def pairs_dense(T: int) -> int:
    """Causal attention: query t sees t + 1 keys; T(T+1)/2 pairs."""
    return T * (T + 1) // 2


def pairs_cmp(T: int, b: Blocks) -> int:
    """Compressed branch: query t sees N_cmp(t + 1) compressed tokens."""
    return int(n_cmp(_queries(T) + 1, b).sum())


def pairs_slc(T: int, b: Blocks) -> int:
    """Selected branch: query t sees the tokens of its n blocks clamped to <= t."""
    return int(selected_tokens(_queries(T) + 1, b.l_slc, b.n).sum())


def pairs_win(T: int, b: Blocks) -> int:
    """Sliding branch: query t sees min(w, t + 1) keys."""
    return int(np.minimum(b.w, _queries(T) + 1).sum())


def _blocks_per_token(count: int, b: Blocks) -> np.ndarray:
    """Selection blocks each of the first `count` compressed tokens overlaps (Eq. 9 nonzeros)."""
    start = np.arange(count, dtype=np.int64) * b.d
    return (start + b.l - 1) // b.l_slc - start // b.l_slc + 1


def mapping_nonzeros(lengths: np.ndarray, b: Blocks) -> int:
    """Sum over queries of the nonzero Eq. 9 weights of their visible compressed tokens.

    `lengths` holds each query's prefix length (t + 1 in prefill, S in decode).
    """
    visible = n_cmp(lengths, b)
    per_token = _blocks_per_token(int(visible.max(initial=0)), b)
    prefix = np.concatenate([[0], np.cumsum(per_token)])
    return int(prefix[visible].sum())


def group_sum_adds(lengths: np.ndarray, b: Blocks, G: int) -> int:
    """Eq. 10 adds per key/value head: (G - 1) per candidate block 0..c of each query."""
    current = (np.asarray(lengths, dtype=np.int64) - 1) // b.l_slc
    return int(((G - 1) * (current + 1)).sum())


# ---- NSA ---------------------------------------------------------------------------------


def _per_pair(s: Shape) -> int:
    return 2 * s.dk + 2 * s.dv


def _per_pair_bwd(s: Shape) -> int:
    return 6 * s.dk + 4 * s.dv


def _sizes(s: Shape, b: Blocks, n_cmp_tokens: int) -> dict[str, int]:
    """Bytes of each array of one call (batch included)."""
    i, B = s.itemsize, s.B
    return {
        "q": B * s.T * s.HQ * s.dk * i,
        "o": B * s.T * s.HQ * s.dv * i,
        "gates": B * s.T * s.HQ * 3 * i,
        "kv_raw": B * s.T * s.H * (s.dk + s.dv) * i,
        "k_cmp": B * n_cmp_tokens * s.H * s.dk * i,
        "kv_cmp": B * n_cmp_tokens * s.H * (s.dk + s.dv) * i,
        "lse1": B * s.T * s.HQ * LSE_BYTES,
        "indices": B * s.T * s.H * b.n * INDEX_BYTES,
    }


def _scores_flops(s: Shape, b: Blocks, lengths: np.ndarray) -> int:
    visible = int(n_cmp(lengths, b).sum())
    return s.B * (
        s.HQ * 2 * s.dk * visible
        + s.HQ * 2 * mapping_nonzeros(lengths, b)
        + s.H * group_sum_adds(lengths, b, s.G)
    )


def nsa_forward(s: Shape, b: Blocks) -> Cost:
    """NSA prefill forward on the kernel contract (compressed tokens given, phi not included)."""
    lengths = _queries(s.T) + 1
    a = _sizes(s, b, int(n_cmp(s.T, b)))
    flops = {
        "cmp": s.B * s.HQ * _per_pair(s) * pairs_cmp(s.T, b),
        "scores": _scores_flops(s, b, lengths),
        "slc": s.B * s.HQ * _per_pair(s) * pairs_slc(s.T, b),
        "win": s.B * s.HQ * _per_pair(s) * pairs_win(s.T, b),
        "combine": 5 * s.B * s.T * s.HQ * s.dv,
    }
    branch_out = a["o"] + a["lse1"]
    nbytes = {
        "cmp": a["q"] + a["kv_cmp"] + branch_out,
        "scores": a["q"] + a["k_cmp"] + a["lse1"] + a["indices"],
        "slc": a["q"] + a["kv_raw"] + a["indices"] + branch_out,
        "win": a["q"] + a["kv_raw"] + branch_out,
        "combine": 3 * a["o"] + a["gates"] + a["o"],
    }
    if b.w == 0:
        flops["win"] = nbytes["win"] = 0
    streams = 2 if b.w else 1
    total = (
        a["q"] + a["kv_cmp"] + streams * a["kv_raw"] + a["gates"]
        + a["o"] + 3 * a["lse1"] + a["indices"]
    )
    return Cost(flops, nbytes, total)


def nsa_backward(s: Shape, b: Blocks) -> Cost:
    """NSA prefill backward with the selected blocks held fixed."""
    a = _sizes(s, b, int(n_cmp(s.T, b)))
    flops = {
        "cmp": s.B * s.HQ * _per_pair_bwd(s) * pairs_cmp(s.T, b),
        "scores": 0,
        "slc": s.B * s.HQ * _per_pair_bwd(s) * pairs_slc(s.T, b),
        "win": s.B * s.HQ * _per_pair_bwd(s) * pairs_win(s.T, b),
        "combine": 9 * s.B * s.T * s.HQ * s.dv,  # dgates: 3 dot products; dO_c: 3 scalings
    }
    # A branch reads q, its k/v, its o, dO and lse, and writes dq, dk, dv.
    branch = 2 * a["q"] + 2 * a["o"] + a["lse1"]
    nbytes = {
        "cmp": branch + 2 * a["kv_cmp"],
        "scores": 0,
        "slc": branch + 2 * a["kv_raw"] + a["indices"],
        "win": branch + 2 * a["kv_raw"],
        "combine": 3 * a["o"] + a["gates"] + a["o"] + 3 * a["o"] + a["gates"],
    }
    if b.w == 0:
        flops["win"] = nbytes["win"] = 0
    streams = 2 if b.w else 1
    inputs = a["q"] + a["kv_cmp"] + streams * a["kv_raw"] + a["gates"]
    total = 2 * inputs + 2 * a["o"] + 3 * a["lse1"] + a["indices"]  # inputs, o, dO in; grads out
    return Cost(flops, nbytes, total)


def nsa_decode(s: Shape, b: Blocks) -> Cost:
    """One NSA decode step: s.T is the cache length S; one query per sequence."""
    S = s.T
    one = Shape(s.B, 1, s.HQ, s.H, s.dk, s.dv, s.itemsize)
    a = _sizes(one, b, 0)
    tokens = {"cmp": int(n_cmp(S, b)), "slc": int(selected_tokens(S, b.l_slc, b.n)), "win": min(b.w, S)}
    kv = {k: s.B * v * s.H * (s.dk + s.dv) * s.itemsize for k, v in tokens.items()}
    lengths = np.array([S])
    flops = {
        "cmp": s.B * s.HQ * _per_pair(s) * tokens["cmp"],
        "scores": _scores_flops(s, b, lengths),
        "slc": s.B * s.HQ * _per_pair(s) * tokens["slc"],
        "win": s.B * s.HQ * _per_pair(s) * tokens["win"],
        "combine": 5 * s.B * s.HQ * s.dv,
    }
    branch_out = a["o"] + a["lse1"]
    nbytes = {
        "cmp": a["q"] + kv["cmp"] + branch_out,
        "scores": a["q"] + s.B * tokens["cmp"] * s.H * s.dk * s.itemsize + a["lse1"] + a["indices"],
        "slc": a["q"] + kv["slc"] + a["indices"] + branch_out,
        "win": a["q"] + kv["win"] + branch_out,
        "combine": 3 * a["o"] + a["gates"] + a["o"],
    }
    total = a["q"] + a["gates"] + sum(kv.values()) + a["o"] + 3 * a["lse1"] + a["indices"]
    return Cost(flops, nbytes, total)


def nsa_selection(s: Shape, b: Blocks) -> Cost:
    """The selected branch alone, indices given: q, k/v and indices in, o and lse out."""
    a = _sizes(s, b, 0)
    flops = {"slc": s.B * s.HQ * _per_pair(s) * pairs_slc(s.T, b)}
    nbytes = {"slc": a["q"] + a["kv_raw"] + a["indices"] + a["o"] + a["lse1"]}
    return Cost(flops, nbytes, nbytes["slc"])


# ---- dense --------------------------------------------------------------------------------


def dense_forward(s: Shape) -> Cost:
    """Dense causal attention forward with native GQA: q, k, v in; o and lse out."""
    a = _sizes(s, Blocks(1, 1, 1, 1, 0), 0)
    flops = s.B * s.HQ * _per_pair(s) * pairs_dense(s.T)
    nbytes = a["q"] + a["kv_raw"] + a["o"] + a["lse1"]
    return Cost({"dense": flops}, {"dense": nbytes}, nbytes)


def dense_backward(s: Shape) -> Cost:
    """Dense causal attention backward: q, k, v, o, dO, lse in; dq, dk, dv out."""
    a = _sizes(s, Blocks(1, 1, 1, 1, 0), 0)
    flops = s.B * s.HQ * _per_pair_bwd(s) * pairs_dense(s.T)
    nbytes = 2 * a["q"] + 2 * a["kv_raw"] + 2 * a["o"] + a["lse1"]
    return Cost({"dense": flops}, {"dense": nbytes}, nbytes)


def dense_decode(s: Shape) -> Cost:
    """Dense attention of one new token over a cache of s.T = S keys: reads every key and value."""
    flops = s.B * s.HQ * _per_pair(s) * s.T
    nbytes = s.B * (s.HQ * (s.dk + s.dv) + s.T * s.H * (s.dk + s.dv)) * s.itemsize
    return Cost({"dense": flops}, {"dense": nbytes}, nbytes)
