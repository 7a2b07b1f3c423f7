"""Invariants of the reference over random small problems (DESIGN.md, Testing).

Causality, GQA consistency, every allowed key weighted, full attention as the dense limit.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nsa_spec import NSAConfig
from nsa_spec.blocks import cmp_visible_mask, n_cmp, n_slc_blocks
from nsa_spec.reference import (
    attention_probs,
    compress_inputs,
    compressed_attention,
    importance_scores,
    is_valid_top_n,
    nsa_attention,
    nsa_forward,
    selected_mask,
    top_n,
    window_mask,
)
from spec_cases import STREAMS, Case, cases, causal_attention, heavy


def forward(case: Case, x: dict[str, np.ndarray], **kwargs):
    return nsa_forward(*(x[n] for n in STREAMS), case.config, case.phi, case.phi_params(), **kwargs)


@given(case=cases(phis=("mean", "mlp")), data=st.data())
def test_causality(case, data):
    """Changing every stream after t changes neither o, lse nor the selected blocks up to t."""
    t = data.draw(st.integers(0, max(case.T - 2, 0)), label="t")
    x = case.inputs()
    rng = np.random.default_rng(case.seed + 1)
    y = {n: a.copy() for n, a in x.items()}
    for n, a in y.items():
        shape = a[:, t + 1 :].shape
        a[:, t + 1 :] = rng.uniform(0.1, 1.0, shape) if n == "gates" else 3 * rng.standard_normal(shape)
    before, after = forward(case, x), forward(case, y)
    np.testing.assert_array_equal(after.o[:, : t + 1], before.o[:, : t + 1])
    np.testing.assert_array_equal(after.lse[:, : t + 1], before.lse[:, : t + 1])
    np.testing.assert_array_equal(after.indices[:, : t + 1], before.indices[:, : t + 1])


@given(case=cases(heads=(1, 1), phis=("mean", "mlp")), G=st.sampled_from([2, 4]))
def test_gqa_identical_query_heads_equal_one_head(case, G):
    """G identical query heads per kv head give G copies of the single-head output and its selection."""
    x = case.inputs()
    y = dict(x, q=np.repeat(x["q"], G, axis=2), gates=np.repeat(x["gates"], G, axis=2))
    one, grouped = forward(case, x), forward(dataclasses.replace(case, HQ=case.HQ * G), y)
    np.testing.assert_array_equal(grouped.indices, one.indices)
    np.testing.assert_allclose(grouped.o, np.repeat(one.o, G, axis=2), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grouped.lse, np.repeat(one.lse, G, axis=2), rtol=1e-12, atol=1e-14)


@given(case=cases(heads=(2, 2), phis=("mean", "mlp")), data=st.data())
def test_gqa_permuting_heads_permutes_outputs(case, data):
    """Swapping kv heads (with their query groups), or query heads inside a group, permutes o/lse;
    the selection moves with the kv heads and ignores the order of heads inside a group."""
    x = case.inputs()
    base = forward(case, x)
    G = case.G
    kv_perm = np.array([1, 0])
    in_group = np.array(data.draw(st.permutations(range(G)), label="in_group"))
    q_perm = np.concatenate([kv_perm[h] * G + in_group for h in range(case.H)])
    y = {n: (a[:, :, q_perm] if n in ("q", "gates") else a[:, :, kv_perm]) for n, a in x.items()}
    moved = forward(case, y)
    np.testing.assert_array_equal(moved.indices, base.indices[:, :, kv_perm])
    np.testing.assert_allclose(moved.o, base.o[:, :, q_perm], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(moved.lse, base.lse[:, :, q_perm], rtol=1e-12, atol=1e-14)


@given(case=cases(max_B=1))
def test_selection_uses_the_group_summed_scores(case):
    """Eq. 10: the group's blocks are the top-n of the sum of its heads' single-head scores."""
    x = case.inputs()
    out = forward(case, x)
    inputs = compress_inputs(*(x[n] for n in STREAMS), case.config)
    cfg, G, T = case.config, case.G, case.T
    total = np.zeros((T, case.H, n_slc_blocks(T, cfg)))
    for hq in range(case.HQ):
        h = hq // G
        _, _, p = compressed_attention(
            inputs.q[0, :, hq : hq + 1], inputs.k_cmp[0, :, h : h + 1], inputs.v_cmp[0, :, h : h + 1], cfg
        )
        total[:, h] += importance_scores(p, total.shape[-1], cfg)[:, 0]
    np.testing.assert_array_equal(out.indices[0], top_n(total, np.arange(T), cfg))


def branch_masks(case: Case, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Allowed keys per branch, written out from NSA.md: bool [H, T, S] for one batch element."""
    cfg, T, H = case.config, case.T, case.H
    N = n_cmp(T, cfg)
    cmp = np.zeros((H, T, N), dtype=bool)
    slc = np.zeros((H, T, T), dtype=bool)
    win = np.zeros((H, T, T), dtype=bool)
    for t in range(T):
        for i in range(N):
            cmp[:, t, i] = i * cfg.cmp_stride + cfg.cmp_len - 1 <= t
        for s in range(t + 1):
            win[:, t, s] = s >= t - cfg.window + 1
            for h in range(H):
                slc[h, t, s] = s // cfg.slc_len in indices[t, h]
    return {"cmp": cmp, "slc": slc, "win": win}


@given(case=cases(max_T=40))
def test_every_allowed_key_has_nonzero_weight(case):
    """The reference masks equal the written-out key sets, and softmax weights are > 0 exactly there."""
    x = case.inputs()
    inputs = compress_inputs(*(x[n] for n in STREAMS), case.config)
    out = nsa_attention(inputs, case.config)
    cfg, T = case.config, case.T
    scale = cfg.softmax_scale(case.dk)
    for b in range(case.B):
        masks = branch_masks(case, out.indices[b])
        N = masks["cmp"].shape[-1]
        np.testing.assert_array_equal(cmp_visible_mask(T, N, cfg) | ~masks["cmp"], True)
        np.testing.assert_array_equal(cmp_visible_mask(T, N, cfg) & ~masks["cmp"], False)
        np.testing.assert_array_equal(selected_mask(out.indices[b], T, cfg), masks["slc"])
        np.testing.assert_array_equal(window_mask(T, T, cfg) == masks["win"], True)
        keys = {"cmp": inputs.k_cmp[b], "slc": inputs.k_slc[b], "win": inputs.k_win[b]}
        for branch, mask in masks.items():
            p, lse = attention_probs(inputs.q[b], keys[branch], mask, scale)
            allowed = np.broadcast_to(mask[:, None], p.shape)
            assert np.all(p[allowed] > 0), branch
            assert np.all(p[~allowed] == 0), branch
            empty = ~mask.any(-1)  # [H, T]
            np.testing.assert_array_equal(np.isneginf(lse), np.repeat(empty.T, case.G, axis=1))


@heavy
@given(case=cases(max_T=30, phis=("mean",)))
def test_perturbing_a_key_changes_exactly_the_queries_that_see_it(case):
    """Replace one key/value pair of one branch: o[t] moves iff the key is allowed for t."""
    x = case.inputs()
    inputs = compress_inputs(*(x[n] for n in STREAMS), case.config)
    base = nsa_attention(inputs, case.config)
    rng = np.random.default_rng(case.seed + 2)
    heads = np.arange(case.HQ) // case.G
    for b in range(case.B):
        masks = branch_masks(case, base.indices[b])
        for branch, mask in masks.items():
            for s in range(mask.shape[-1]):
                k, v = np.array(getattr(inputs, f"k_{branch}")), np.array(getattr(inputs, f"v_{branch}"))
                k[b, s] += rng.standard_normal(k[b, s].shape)
                v[b, s] += rng.standard_normal(v[b, s].shape)
                o = nsa_attention(inputs.replace(**{f"k_{branch}": k, f"v_{branch}": v}), case.config).o
                changed = np.any(o[b] != base.o[b], axis=-1)  # [T, HQ]
                np.testing.assert_array_equal(changed, mask[heads, :, s].T, err_msg=f"{branch} key {s}")


@given(case=cases(max_T=40, phis=("mean", "mlp")), extra_window=st.integers(0, 5))
def test_dense_limit_is_full_causal_attention(case, extra_window):
    """With n*l' >= T and w >= T the slc and win branches are full causal attention."""
    cfg = case.config
    T = min(case.T, cfg.top_n * cfg.slc_len)
    case = dataclasses.replace(case, T=T, config=dataclasses.replace(cfg, window=T + extra_window))
    x = case.inputs()
    x["k_win"], x["v_win"] = x["k_slc"], x["v_slc"]
    o_full, lse_full = causal_attention(x["q"], x["k_slc"], x["v_slc"], cfg.softmax_scale(case.dk))
    for gates in ((0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.5, 0.5)):
        out = forward(case, dict(x, gates=np.broadcast_to(gates, x["gates"].shape)))
        np.testing.assert_allclose(out.o, o_full, rtol=1e-12, atol=1e-13, err_msg=str(gates))
        np.testing.assert_allclose(out.lse[..., 1], lse_full, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(out.lse[..., 2], lse_full, rtol=1e-12, atol=1e-13)
    c = np.arange(T) // cfg.slc_len
    all_blocks = [list(range(ct + 1)) + [-1] * (cfg.top_n - ct - 1) for ct in c]
    expected = np.broadcast_to(np.array(all_blocks)[None, :, None], out.indices.shape)
    np.testing.assert_array_equal(out.indices, expected)


@given(case=cases(max_T=40, phis=("mean", "mlp")))
def test_empty_key_sets_give_zero_and_minus_inf(case):
    """Queries t < l - 1 see no compressed token: o_cmp = 0, lse_cmp = -inf, nothing NaN."""
    x = case.inputs()
    out = forward(case, dict(x, gates=np.broadcast_to((1.0, 0.0, 0.0), x["gates"].shape)))
    early = min(case.config.cmp_len - 1, case.T)
    np.testing.assert_array_equal(out.o[:, :early], 0.0)
    assert np.all(np.isneginf(out.lse[:, :early, :, 0]))
    assert np.all(np.isfinite(out.lse[:, early:]))
    assert np.all(np.isfinite(out.o)) and np.all(np.isfinite(out.lse[..., 1:]))


FIXED = [
    Case(NSAConfig(window=64), B=1, T=1100, HQ=2, H=1, dk=4, dv=3, seed=1),  # paper blocks, 18 blocks
    Case(
        NSAConfig(cmp_len=16, cmp_stride=8, slc_len=32, top_n=4, window=24),
        B=2,
        T=100,
        HQ=4,
        H=2,
        dk=16,
        dv=8,
    ),
    Case(NSAConfig(cmp_len=8, cmp_stride=4, slc_len=8, top_n=3, window=5), B=2, T=77, HQ=8, H=2, dk=5, dv=7),
    Case(NSAConfig(cmp_len=8, cmp_stride=8, slc_len=16, top_n=5, window=1), B=1, T=7, HQ=2, H=2, dk=4, dv=4),
    Case(NSAConfig(cmp_len=4, cmp_stride=1, slc_len=4, top_n=6, window=3), B=1, T=1, HQ=16, H=1, dk=2, dv=3),
    Case(
        NSAConfig(cmp_len=4, cmp_stride=2, slc_len=12, top_n=3, window=40),
        B=2,
        T=61,
        HQ=4,
        H=4,
        dk=8,
        dv=2,
        phi="mlp",
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in FIXED])
def test_fixed_cases_select_a_valid_top_n(case):
    """Shapes, finiteness, and a selection that is exactly a valid top-n of the Eq. 10 scores."""
    x = case.inputs()
    out = forward(case, x)
    cfg, T = case.config, case.T
    assert out.o.shape == (case.B, T, case.HQ, case.dv) and out.lse.shape == (case.B, T, case.HQ, 3)
    assert out.indices.shape == (case.B, T, case.H, cfg.top_n)
    assert np.all(np.isfinite(out.o)) and not np.any(np.isnan(out.lse))
    inputs = compress_inputs(*(x[n] for n in STREAMS), cfg, case.phi, case.phi_params())
    for b in range(case.B):
        _, _, p = compressed_attention(inputs.q[b], inputs.k_cmp[b], inputs.v_cmp[b], cfg)
        scores = importance_scores(p, n_slc_blocks(T, cfg), cfg)
        assert is_valid_top_n(out.indices[b], scores, np.arange(T), cfg, tol=0.0).all()
        idx = out.indices[b]
        padded = np.where(idx < 0, T + np.arange(cfg.top_n), idx)  # -1 only after the blocks
        assert np.all(np.diff(padded, axis=-1) > 0)
