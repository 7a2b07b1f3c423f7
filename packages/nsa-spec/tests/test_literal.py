"""The reference against NSA.md written out literally, one query and one head at a time.

Nothing here reuses the reference's masks, overlap matrix or top-n: compressed-token visibility,
the Eq. 9 overlap, the group sum, the forced blocks and the tie rule are spelled out in loops.
phi comes from the reference `compress` (itself checked against the written-out phi elsewhere).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from nsa_spec.reference import compress, nsa_forward
from spec_cases import STREAMS, Case, cases


def softmax_attend(
    q: np.ndarray, K: list, V: list, scale: float, dv: int
) -> tuple[np.ndarray, float, np.ndarray]:
    """(o, lse, p) of one query over the keys K / values V; zero output and -inf over none."""
    if not K:
        return np.zeros(dv), -np.inf, np.zeros(0)
    s = np.array([scale * float(q @ k) for k in K])
    m = s.max()
    e = np.exp(s - m)
    p = e / e.sum()
    return p @ np.array(V), m + np.log(e.sum()), p


def literal_nsa(case: Case, x: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cfg = case.config
    l, d, ls, n, w = cfg.cmp_len, cfg.cmp_stride, cfg.slc_len, cfg.top_n, cfg.window
    B, T, H, G, dv = case.B, case.T, case.H, case.G, case.dv
    scale = cfg.softmax_scale(case.dk)
    params = case.phi_params()
    k_cmp = compress(x["k_raw"], cfg, case.phi, None if params is None else params["k"])
    v_cmp = compress(x["v_raw"], cfg, case.phi, None if params is None else params["v"])
    o = np.zeros((B, T, case.HQ, dv))
    lse = np.zeros((B, T, case.HQ, 3))
    indices = np.full((B, T, H, n), -1)
    for b in range(B):
        for t in range(T):
            c = t // ls
            visible = [i for i in range(k_cmp.shape[1]) if i * d + l <= t + 1]
            for h in range(H):
                heads = range(h * G, (h + 1) * G)
                score = np.zeros(c + 1)
                for hq in heads:
                    K = [k_cmp[b, i, h] for i in visible]
                    o_c, lse[b, t, hq, 0], p = softmax_attend(
                        x["q"][b, t, hq], K, [v_cmp[b, i, h] for i in visible], scale, dv
                    )
                    o[b, t, hq] += x["gates"][b, t, hq, 0] * o_c
                    for j in range(c + 1):
                        for pi, i in zip(p, visible, strict=True):
                            overlap = min(i * d + l, (j + 1) * ls) - max(i * d, j * ls)
                            score[j] += max(overlap, 0) / d * pi
                forced = sorted({0, max(c - 1, 0), c})
                free = sorted((j for j in range(c + 1) if j not in forced), key=lambda j: (-score[j], j))
                chosen = sorted(forced + free[: n - len(forced)])
                indices[b, t, h, : len(chosen)] = chosen
                slc = [s for j in chosen for s in range(j * ls, min((j + 1) * ls, t + 1))]
                win = range(max(0, t - w + 1), t + 1)
                for hq in heads:
                    for branch, keys, name in ((1, slc, "slc"), (2, win, "win")):
                        o_b, lse[b, t, hq, branch], _ = softmax_attend(
                            x["q"][b, t, hq],
                            [x[f"k_{name}"][b, s, h] for s in keys],
                            [x[f"v_{name}"][b, s, h] for s in keys],
                            scale,
                            dv,
                        )
                        o[b, t, hq] += x["gates"][b, t, hq, branch] * o_b
    return o, lse, indices


@given(case=cases(max_T=60, phis=("mean", "mlp")))
def test_reference_equals_the_literal_spec(case):
    x = case.inputs()
    out = nsa_forward(*(x[n] for n in STREAMS), case.config, case.phi, case.phi_params())
    o, lse, indices = literal_nsa(case, x)
    np.testing.assert_array_equal(out.indices, indices)
    np.testing.assert_allclose(out.o, o, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(out.lse, lse, rtol=1e-12, atol=1e-13)
