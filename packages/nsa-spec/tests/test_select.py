"""Top-n (Eq. 11): forced blocks, the exact tie rule (lower block index wins), padding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nsa_spec import NSAConfig
from nsa_spec.blocks import n_slc_blocks
from nsa_spec.reference import (
    compress,
    compressed_attention,
    decode_attention,
    importance_scores,
    is_valid_top_n,
    nsa_forward,
    prefill,
    top_n,
)
from spec_cases import configs

TIE = NSAConfig(cmp_len=4, cmp_stride=4, slc_len=8, top_n=4, window=4)


def brute_top_n(scores: np.ndarray, t: int, config: NSAConfig) -> list[int]:
    """Eq. 11 for one query, written out: forced blocks, then free ones by (-score, index)."""
    c = t // config.slc_len
    chosen = sorted({0, max(c - 1, 0), c})
    free = sorted((j for j in range(c + 1) if j not in chosen), key=lambda j: (-scores[j], j))
    chosen = sorted(chosen + free[: config.top_n - len(chosen)])
    return chosen + [-1] * (config.top_n - len(chosen))


@pytest.mark.parametrize(
    ("scores", "n", "expected"),
    [
        ([0.0, 0.5, 0.5, 0.5, 0.0, 0.0], 4, [0, 1, 4, 5]),
        ([0.0, 0.5, 0.5, 0.5, 0.0, 0.0], 5, [0, 1, 2, 4, 5]),
        ([0.0, 0.25, 0.5, 0.5, 0.0, 0.0], 4, [0, 2, 4, 5]),
        ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0], 4, [0, 1, 4, 5]),
        ([0.0, 0.3, 0.1, 0.3, 0.0, 0.0], 5, [0, 1, 3, 4, 5]),
    ],
    ids=["three-way-tie", "three-way-tie-n5", "tie-2-3", "all-zero", "tie-1-3-n5"],
)
def test_top_n_ties_lower_index_wins(scores, n, expected):
    cfg = NSAConfig(cmp_len=4, cmp_stride=4, slc_len=8, top_n=n, window=4)
    idx = top_n(np.array(scores)[None, None, :], np.array([47]), cfg)  # t = 47: current block 5
    assert idx.tolist() == [[expected]]


def test_top_n_forced_and_future_blocks():
    """Forced blocks win whatever their score; blocks after the current one never get a slot."""
    scores = np.array([0.0, 9.0, 8.0, 0.0, 0.0, 0.0, 7.0, 7.0])[None, None, :]
    idx = top_n(scores, np.array([3 * 8 + 2]), TIE)  # t = 26, current block 3
    assert idx.tolist() == [[[0, 1, 2, 3]]]
    idx = top_n(scores, np.array([0, 8, 17]), TIE)  # blocks 0, 0..1, 0..2 exist
    assert idx[:, 0].tolist() == [[0, -1, -1, -1], [0, 1, -1, -1], [0, 1, 2, -1]]


@given(
    cfg=configs(),
    t=st.integers(0, 200),
    levels=st.lists(st.integers(0, 3), min_size=30, max_size=30),
)
def test_top_n_matches_brute_force(cfg, t, levels):
    """Scores from 4 levels make ties common; the set must match the written-out rule."""
    n_blocks = t // cfg.slc_len + 1 + 2  # two future blocks
    scores = (np.array(levels[:n_blocks] + [0] * max(0, n_blocks - 30), dtype=float) / 4)[:n_blocks]
    idx = top_n(scores[None, None, :], np.array([t]), cfg)[0, 0]
    assert idx.tolist() == brute_top_n(scores, t, cfg)
    assert is_valid_top_n(idx[None, None], scores[None, None], np.array([t]), cfg, tol=0.0).all()


def test_is_valid_top_n_rejects_wrong_sets():
    scores = np.array([0.0, 0.5, 0.25, 0.5, 0.0, 0.0])[None, None]
    pos = np.array([47])
    ok = [[[0, 1, 4, 5]]]
    assert is_valid_top_n(np.array(ok), scores, pos, TIE, tol=0.0).all()
    assert is_valid_top_n(np.array([[[0, 3, 4, 5]]]), scores, pos, TIE, tol=0.0).all()  # the tie
    for bad in ([0, 2, 4, 5], [1, 3, 4, 5], [0, 1, 1, 5], [0, 1, 4, -1], [0, 1, 4, 6]):
        assert not is_valid_top_n(np.array([[bad]]), scores, pos, TIE, tol=0.0).all(), bad
    assert is_valid_top_n(np.array([[[0, 2, 4, 5]]]), scores, pos, TIE, tol=0.25).all()


def tie_inputs(block3_key: float = 2.0) -> dict[str, np.ndarray]:
    """48 tokens, blocks of 8, one compressed token per 4 raw ones (so block j holds tokens 2j, 2j+1).

    Raw keys of blocks 1 and 3 are identical, so their compressed tokens, softmax weights and
    two-term block scores are bit-identical; block 2 scores lower, blocks 0, 4, 5 are forced.
    """
    T = 48
    k_raw = np.zeros((1, T, 1, 2))
    k_raw[0, 8:16, 0, 0] = 2.0
    k_raw[0, 16:24, 0, 0] = 1.0
    k_raw[0, 24:32, 0, 0] = block3_key
    rng = np.random.default_rng(0)
    q = np.zeros((1, T, 1, 2))
    q[..., 0] = 1.0
    streams = {n: rng.standard_normal((1, T, 1, 2)) for n in ("v_raw", "k_slc", "v_slc", "k_win", "v_win")}
    return {"q": q, "k_raw": k_raw, **streams, "gates": np.full((1, T, 1, 3), 0.5)}


def test_exact_tie_end_to_end():
    x = tie_inputs()
    k_cmp, v_cmp = compress(x["k_raw"], TIE)[0], compress(x["v_raw"], TIE)[0]
    _, _, p_cmp = compressed_attention(x["q"][0], k_cmp, v_cmp, TIE)
    scores = importance_scores(p_cmp, n_slc_blocks(48, TIE), TIE)  # [T, H, 6]
    last = slice(40, 48)  # queries in block 5
    assert np.all(scores[last, 0, 1] == scores[last, 0, 3])  # the construction ties exactly
    assert np.all(scores[last, 0, 1] > scores[last, 0, 2])
    out = nsa_forward(*x.values(), TIE)
    assert out.indices[0, last, 0].tolist() == [[0, 1, 4, 5]] * 8
    # decode selects the same blocks for the same prefix, tie included
    _, cache = prefill(*x.values(), TIE)
    res = decode_attention(cache, x["q"][:, -1:], x["gates"][:, -1:], TIE)
    assert res.out.indices[0, 0, 0].tolist() == [0, 1, 4, 5]


def test_breaking_the_tie_flips_the_choice():
    """Block 3 slightly ahead of block 1 wins: the tie above decided the selection."""
    out = nsa_forward(*tie_inputs(block3_key=2.0 + 1e-9).values(), TIE)
    assert out.indices[0, 40:48, 0].tolist() == [[0, 3, 4, 5]] * 8
