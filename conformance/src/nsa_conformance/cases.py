"""The hostile shape catalogue and its fixed-seed inputs.

A `Case` is one problem shape plus block sizes; its id reads like
`B2-T101-HQ4-H2-dk16-dv8-l8d4s16n4w20` (l, d, l', n, w). Inputs are float64 and drawn from a
generator seeded by the id, so every run and every backend sees the same numbers.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from nsa_spec.backends.capabilities import Problem
from nsa_spec.blocks import cmp_cu_seqlens, n_cmp
from nsa_spec.config import NSAConfig
from nsa_spec.contract import NSAInputs
from nsa_spec.reference.compress import compress


@dataclass(frozen=True)
class Case:
    """One problem shape. `segments`, when set, packs sequences of those lengths (B must be 1)."""

    B: int
    T: int
    HQ: int
    H: int
    dk: int
    dv: int
    l: int
    d: int
    ls: int
    n: int
    w: int
    segments: tuple[int, ...] | None = None

    def __str__(self) -> str:
        base = (f"B{self.B}-T{self.T}-HQ{self.HQ}-H{self.H}-dk{self.dk}-dv{self.dv}"
                f"-l{self.l}d{self.d}s{self.ls}n{self.n}w{self.w}")
        return base if self.segments is None else base + "-varlen" + "_".join(map(str, self.segments))

    @property
    def config(self) -> NSAConfig:
        return NSAConfig(cmp_len=self.l, cmp_stride=self.d, slc_len=self.ls, top_n=self.n, window=self.w)

    @property
    def cu_seqlens(self) -> np.ndarray | None:
        if self.segments is None:
            return None
        return np.concatenate([[0], np.cumsum(self.segments)]).astype(np.int64)

    @property
    def n_cmp(self) -> int:
        if self.segments is None:
            return n_cmp(self.T, self.config)
        return int(cmp_cu_seqlens(self.cu_seqlens, self.config)[-1])

    def problem(self, op: str, array_api: str, device: str, dtype: str,
                compute_capability: tuple[int, int] | None = None) -> Problem:
        return Problem(op=op, array_api=array_api, device=device, dtype=dtype, heads_q=self.HQ,
                       heads_kv=self.H, dk=self.dk, dv=self.dv, config=self.config,
                       varlen=self.segments is not None, compute_capability=compute_capability)

    def rng(self, salt: str = "") -> np.random.Generator:
        return np.random.default_rng(zlib.crc32(f"{self}/{salt}".encode()))

    def inputs(self, salt: str = "") -> NSAInputs:
        """Random float64 inputs. q is scaled so that block scores are decisive, not flat."""
        rng = self.rng(salt)
        B, T, HQ, H, dk, dv, N = self.B, self.T, self.HQ, self.H, self.dk, self.dv, self.n_cmp
        return NSAInputs(
            q=1.5 * rng.standard_normal((B, T, HQ, dk)),
            k_cmp=rng.standard_normal((B, N, H, dk)),
            v_cmp=rng.standard_normal((B, N, H, dv)),
            k_slc=rng.standard_normal((B, T, H, dk)),
            v_slc=rng.standard_normal((B, T, H, dv)),
            k_win=rng.standard_normal((B, T, H, dk)),
            v_win=rng.standard_normal((B, T, H, dv)),
            gates=rng.uniform(0.1, 1.0, (B, T, HQ, 3)),
            cu_seqlens=self.cu_seqlens,
        )

    def raw_streams(self, salt: str = "") -> dict[str, np.ndarray]:
        """Raw per-token streams for decode: q, k_raw/v_raw (cmp stream), slc, win, gates."""
        rng = self.rng("raw" + salt)
        B, T, HQ, H, dk, dv = self.B, self.T, self.HQ, self.H, self.dk, self.dv
        shapes = {"q": (B, T, HQ, dk), "k_raw": (B, T, H, dk), "v_raw": (B, T, H, dv),
                  "k_slc": (B, T, H, dk), "v_slc": (B, T, H, dv), "k_win": (B, T, H, dk),
                  "v_win": (B, T, H, dv)}
        out = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
        out["q"] *= 1.5
        out["gates"] = rng.uniform(0.1, 1.0, (B, T, HQ, 3))
        return out


def contract_inputs(raw: dict[str, np.ndarray], config: NSAConfig) -> NSAInputs:
    """Kernel-contract inputs from raw streams, phi = mean (what a decode cache holds)."""
    return NSAInputs(raw["q"], compress(raw["k_raw"], config), compress(raw["v_raw"], config),
                     raw["k_slc"], raw["v_slc"], raw["k_win"], raw["v_win"], raw["gates"])


# Block sizes (l, d, l', n, w): small so that T <= ~300 still spans many blocks.
A = dict(l=8, d=4, ls=16, n=4, w=20)       # 7 blocks at T=101 > n; w not a multiple of anything
B_ = dict(l=16, d=8, ls=32, n=3, w=7)      # n = forced blocks only; w < l
C = dict(l=4, d=4, ls=8, n=16, w=5)        # l = d (no overlap); n far above the block count
D = dict(l=8, d=8, ls=8, n=5, w=33)        # l = d = l'
P = dict(l=32, d=16, ls=64, n=4, w=64)     # the paper's l, d, l'; 5 blocks at T=299

FORWARD = [
    Case(2, 101, 4, 2, 16, 8, **A),
    Case(1, 1, 2, 2, 8, 8, **A),
    Case(1, 7, 4, 1, 8, 16, **A),
    Case(1, 77, 8, 1, 16, 16, **B_),
    Case(1, 45, 16, 1, 8, 4, **C),
    Case(3, 61, 6, 3, 12, 20, **D),
    Case(1, 299, 2, 1, 32, 16, **P),
]
QUICK_FORWARD = FORWARD[:3]

# Few and small: every new shape and dtype costs JAX seconds of compilation in the oracle.
BACKWARD = [
    Case(2, 61, 4, 2, 16, 8, **A),
    Case(1, 7, 4, 1, 8, 16, **A),
    Case(1, 45, 16, 1, 8, 4, **C),
    Case(1, 64, 4, 2, 8, 8, **A, segments=(37, 27)),
]

DECODE = [
    Case(2, 70, 4, 2, 16, 8, **A),
    Case(1, 40, 8, 1, 8, 16, **B_),
]

# Batches of sequences of different lengths (the suite's varied_lengths: T, 1, l - 1, ...).
VARIED_DECODE = [
    Case(3, 70, 4, 2, 16, 8, **A),
    Case(4, 40, 8, 1, 8, 16, **B_),
]

VARLEN = [
    Case(1, 103, 4, 2, 16, 8, **A, segments=(37, 1, 5, 60)),
    Case(1, 90, 8, 1, 8, 16, **B_, segments=(50, 40)),
]

# Every group size of the paper's range, one shape each, for GQA checks.
GROUPS = [Case(1, 53, 2 * g if g < 16 else g, 2 if g < 16 else 1, 8, 8, **A) for g in (1, 2, 4, 8, 16)]

# n * l' >= T and w >= T: the selected and sliding branches are full causal attention.
FULL = [
    Case(2, 37, 4, 2, 16, 8, l=8, d=4, ls=16, n=3, w=40),
    Case(1, 20, 8, 1, 8, 12, l=4, d=2, ls=4, n=5, w=20),
]
