"""Shared test cases for nsa-spec: Hypothesis strategies, random inputs, a naive attention.

A `Case` is one problem (config, shapes, phi, seed) with a readable id such as
`B2-T37-HQ4-H2-dk3-dv5-l8d4l'16n4w9-mean`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from nsa_spec import NSAConfig
from nsa_spec.reference import init_mlp_params

STREAMS = ("q", "k_raw", "v_raw", "k_slc", "v_slc", "k_win", "v_win", "gates")

# Tests that run many forwards per example take a quarter of the profile's examples.
heavy = settings(max_examples=max(5, settings().max_examples // 4))


@dataclass(frozen=True)
class Case:
    """One problem: config, shapes [B, T, HQ, H, dk, dv], phi and the seed of its inputs."""

    config: NSAConfig
    B: int
    T: int
    HQ: int
    H: int
    dk: int
    dv: int
    phi: str = "mean"
    seed: int = 0

    @property
    def G(self) -> int:
        return self.HQ // self.H

    @property
    def id(self) -> str:
        c = self.config
        return (
            f"B{self.B}-T{self.T}-HQ{self.HQ}-H{self.H}-dk{self.dk}-dv{self.dv}-"
            f"l{c.cmp_len}d{c.cmp_stride}l'{c.slc_len}n{c.top_n}w{c.window}-{self.phi}"
        )

    def inputs(self) -> dict[str, np.ndarray]:
        """Random float64 raw streams and gates in (0.1, 1) for `nsa_forward`, by name."""
        rng = np.random.default_rng(self.seed)
        B, T, HQ, H, dk, dv = self.B, self.T, self.HQ, self.H, self.dk, self.dv
        shapes = {
            "q": (B, T, HQ, dk), "k_raw": (B, T, H, dk), "v_raw": (B, T, H, dv),
            "k_slc": (B, T, H, dk), "v_slc": (B, T, H, dv), "k_win": (B, T, H, dk),
            "v_win": (B, T, H, dv),
        }
        arrays = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
        arrays["gates"] = rng.uniform(0.1, 1.0, (B, T, HQ, 3))
        return arrays

    def phi_params(self) -> dict | None:
        """phi 'mlp' parameters for keys and values (hidden width 5), None for 'mean'."""
        if self.phi == "mean":
            return None
        rng = np.random.default_rng(self.seed + 1)
        l = self.config.cmp_len
        return {"k": init_mlp_params(rng, l, self.dk, 5), "v": init_mlp_params(rng, l, self.dv, 5)}


# The oracle runs under JAX op by op, and XLA compiles every new (primitive, shape) pair, which
# costs seconds per new problem shape on CI's 2 cores. So the shapes come from a short list (each
# compiles once) while Hypothesis varies phi, the data and the output cotangent; other tests that
# call the gradient oracle reuse them. Both configs
# make the 19-token sequences select among several blocks, with T not a multiple of any size.
GRAD_CASES = [
    Case(NSAConfig(cmp_len=4, cmp_stride=2, slc_len=4, top_n=4, window=5), B=2, T=19, HQ=4, H=2, dk=3, dv=2),
    Case(NSAConfig(cmp_len=2, cmp_stride=1, slc_len=3, top_n=3, window=2), B=1, T=11, HQ=2, H=1, dk=2, dv=3),
]


@st.composite
def configs(draw: st.DrawFn, max_window: int = 40) -> NSAConfig:
    """Valid small configs: l in {4, 8, 16}, d | l, l' a multiple of d in [l, 24], n in 3..6,
    the default softmax scale or a given one."""
    l = draw(st.sampled_from([4, 8, 16]))
    d = draw(st.sampled_from([x for x in (1, 2, 4, 8, 16) if l % x == 0]))
    l_slc = d * draw(st.integers(l // d, 24 // d))
    return NSAConfig(
        cmp_len=l, cmp_stride=d, slc_len=l_slc, top_n=draw(st.integers(3, 6)),
        window=draw(st.integers(1, max_window)), scale=draw(st.sampled_from([None, None, 0.3, 2.0])),
    )


@st.composite
def cases(
    draw: st.DrawFn, max_T: int = 120, max_B: int = 2, max_dim: int = 6, phis: tuple[str, ...] = ("mean",),
    heads: tuple[int, int] = (1, 2), config: st.SearchStrategy[NSAConfig] | None = None,
) -> Case:
    """Problems over small configs. T is 1, below l, up to (n + 3) * l' (capped at max_T), or
    most often beyond n * l' so that selection must choose; rarely a multiple of a block size."""
    cfg = draw(config if config is not None else configs())
    long_T = min(max_T, (cfg.top_n + 3) * cfg.slc_len)
    kind = draw(st.sampled_from(["one", "below_l", "any", "beyond_n_blocks", "beyond_n_blocks"]))
    low, high = {
        "one": (1, 1), "below_l": (1, max(cfg.cmp_len - 1, 1)), "any": (1, long_T),
        "beyond_n_blocks": (min(cfg.top_n * cfg.slc_len + 1, long_T), long_T),
    }[kind]
    T = draw(st.integers(low, high))
    H = draw(st.integers(*heads))
    return Case(
        config=cfg, B=draw(st.integers(1, max_B)), T=T, HQ=H * draw(st.sampled_from([1, 2, 4])), H=H,
        dk=draw(st.integers(1, max_dim)), dv=draw(st.integers(1, max_dim)),
        phi=draw(st.sampled_from(phis)), seed=draw(st.integers(0, 2**32 - 1)),
    )


def causal_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Full causal attention written out per query: q [B, T, HQ, dk], k/v [B, T, H, .] -> o, lse."""
    B, T, HQ, _ = q.shape
    G = HQ // k.shape[2]
    o = np.zeros((B, T, HQ, v.shape[-1]))
    lse = np.zeros((B, T, HQ))
    for b in range(B):
        for t in range(T):
            for h in range(HQ):
                s = scale * (k[b, : t + 1, h // G] @ q[b, t, h])
                m = s.max()
                e = np.exp(s - m)
                o[b, t, h] = e @ v[b, : t + 1, h // G] / e.sum()
                lse[b, t, h] = m + np.log(e.sum())
    return o, lse
