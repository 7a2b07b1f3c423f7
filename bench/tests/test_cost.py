"""The FLOP/byte model against counts done by hand, and against the reference's own masks."""

from __future__ import annotations

import numpy as np
import pytest
from nsa_spec import blocks, counters
from nsa_spec.config import NSAConfig
from nsa_spec.reference.select import selected_mask, top_n
from nsa_spec.reference.window import window_mask

from bench import cost

# Hand-count setting: l=4, d=2, l'=4, n=3, w=3; T=14; B=2, HQ=4, H=2 (G=2), dk=8, dv=4, 2 bytes.
CFG = NSAConfig(cmp_len=4, cmp_stride=2, slc_len=4, top_n=3, window=3)
B = cost.Blocks.from_config(CFG)
S = cost.Shape(B=2, T=14, HQ=4, H=2, dk=8, dv=4, itemsize=2)
PER_PAIR = 2 * 8 + 2 * 4  # q.k and p.v multiply-adds: 24 FLOPs per (query head, key)


def test_pair_counts_by_hand():
    # Query t sees N_cmp(t+1) compressed tokens; for t+1 = 1..14: 0,0,0,1,1,2,2,3,3,4,4,5,5,6.
    assert cost.pairs_cmp(14, B) == 1 + 1 + 2 + 2 + 3 + 3 + 4 + 4 + 5 + 5 + 6
    # Blocks of 4, n=3: prefixes 1..12 have <= 3 blocks (all tokens: 1+..+12 = 78); prefixes 13
    # and 14 have 4 blocks: 2 full blocks + current fill 1 or 2 -> 9, 10.
    assert cost.pairs_slc(14, B) == 78 + 9 + 10
    # Window 3: 1 + 2 + 3 * 12.
    assert cost.pairs_win(14, B) == 1 + 2 + 36
    assert cost.pairs_dense(14) == 105


def test_eq9_nonzeros_and_group_sum_by_hand():
    # Compressed token i covers [2i, 2i+4): blocks {0}, {0,1}, {1}, {1,2}, {2}, {2,3} for i=0..5,
    # so the nonzeros of the first v tokens are 0,1,3,4,6,7,9 for v = 0..6. The 14 queries see
    # v = 0,0,0,1,1,2,2,3,3,4,4,5,5,6.
    lengths = np.arange(1, 15)
    assert cost.mapping_nonzeros(lengths, B) == 1 + 1 + 3 + 3 + 4 + 4 + 6 + 6 + 7 + 7 + 9
    # Candidate blocks 0..c with c = t // 4: 1 (x4), 2 (x4), 3 (x4), 4 (x2) = 32; (G-1) = 1 each.
    assert cost.group_sum_adds(lengths, B, G=2) == 32


def test_nsa_forward_flops_by_hand():
    c = cost.nsa_forward(S, B)
    assert c.flops["cmp"] == 2 * 4 * PER_PAIR * 36 == 6912
    # scores: recompute q.k~ (2*dk per visible pair and query head), 2 per Eq. 9 nonzero and
    # query head, (G-1) adds per candidate block and kv head; times B.
    assert c.flops["scores"] == 2 * (4 * 16 * 36 + 4 * 2 * 51 + 2 * 1 * 32) == 5552
    assert c.flops["slc"] == 2 * 4 * PER_PAIR * 97 == 18624
    assert c.flops["win"] == 2 * 4 * PER_PAIR * 39 == 7488
    assert c.flops["combine"] == 5 * 2 * 14 * 4 * 4 == 2240  # 3 mul + 2 add per output element
    assert c.total_flops == 6912 + 5552 + 18624 + 7488 + 2240


def test_nsa_forward_bytes_by_hand():
    q, o, gates = 2 * 14 * 4 * 8 * 2, 2 * 14 * 4 * 4 * 2, 2 * 14 * 4 * 3 * 2  # 1792, 896, 672
    kv_raw = 2 * 14 * 2 * (8 + 4) * 2  # one stream's k and v: 1344
    kv_cmp = 2 * 6 * 2 * (8 + 4) * 2  # N_cmp(14) = 6 compressed tokens: 576
    lse = 2 * 14 * 4 * 4  # float32 per query head and branch: 448
    idx = 2 * 14 * 2 * 3 * 4  # int32 [B, T, H, n]: 672
    c = cost.nsa_forward(S, B)
    assert c.total_bytes == q + kv_cmp + 2 * kv_raw + gates + o + 3 * lse + idx == 8640
    assert c.bytes["slc"] == q + kv_raw + idx + o + lse
    assert c.bytes["combine"] == 3 * o + gates + o


def test_backward_flops_by_hand():
    per_pair_bwd = 6 * 8 + 4 * 4  # recompute q.k, dP, dV, dQ, dK
    c = cost.nsa_backward(S, B)
    assert c.flops["cmp"] == 2 * 4 * per_pair_bwd * 36
    assert c.flops["slc"] == 2 * 4 * per_pair_bwd * 97
    assert c.flops["scores"] == 0
    assert c.flops["combine"] == 9 * 2 * 14 * 4 * 4
    d = cost.dense_backward(cost.Shape(1, 10, 2, 2, 16, 16, 2))
    assert d.total_flops == 2.5 * cost.dense_forward(cost.Shape(1, 10, 2, 2, 16, 16, 2)).total_flops


def test_dense_by_hand():
    c = cost.dense_forward(S)
    assert c.total_flops == 2 * 4 * PER_PAIR * 105 == 20160
    q, o, kv, lse = 1792, 896, 1344, 448
    assert c.total_bytes == q + kv + o + lse
    assert cost.dense_backward(S).total_bytes == 2 * q + 2 * kv + 2 * o + lse


def test_decode_by_hand():
    c = cost.nsa_decode(S, B)  # S.T = 14 is the cache length
    # Reads 6 compressed tokens, 10 selected tokens (2 full blocks + 2), 3 window tokens.
    assert c.flops["cmp"] == 2 * 4 * PER_PAIR * 6
    assert c.flops["slc"] == 2 * 4 * PER_PAIR * 10
    assert c.flops["win"] == 2 * 4 * PER_PAIR * 3
    assert c.flops["scores"] == 2 * (4 * 16 * 6 + 4 * 2 * 9 + 2 * 1 * 4)
    kv = 2 * (6 + 10 + 3) * 2 * 12 * 2
    assert c.total_bytes == 2 * 4 * 8 * 2 + 2 * 4 * 3 * 2 + kv + 2 * 4 * 4 * 2 + 3 * 2 * 4 * 4 + 2 * 2 * 3 * 4
    d = cost.dense_decode(S)
    assert d.total_flops == 2 * 4 * PER_PAIR * 14
    assert d.total_bytes == 2 * (4 * 12 + 14 * 2 * 12) * 2


def test_selection_stage_alone():
    c = cost.nsa_selection(S, B)
    assert c.flops == {"slc": 2 * 4 * PER_PAIR * 97}
    assert c.total_bytes == 1792 + 1344 + 672 + 896 + 448


def test_no_window_branch():
    no_win = cost.Blocks(4, 4, 4, 3, 0)
    c = cost.nsa_forward(S, no_win)
    assert c.flops["win"] == 0 and c.bytes["win"] == 0


@pytest.mark.parametrize(
    "cfg", [CFG, NSAConfig(), NSAConfig(cmp_len=16, cmp_stride=8, slc_len=32, top_n=5, window=40)]
)
def test_counts_agree_with_nsa_spec(cfg):
    b = cost.Blocks.from_config(cfg)
    for length in [1, 2, 15, 16, 31, 32, 33, 100, 1000, 1025, 5000]:
        assert int(cost.n_cmp(length, b)) == blocks.n_cmp(length, cfg)
        assert int(cost.selected_tokens(length, b.l_slc, b.n)) == counters.selected_tokens(length, cfg)


@pytest.mark.parametrize("T", [1, 7, 33, 70, 130])
def test_pairs_equal_reference_masks(T):
    """Count allowed pairs from the reference's own masks on a real top-n selection."""
    cfg = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=16, top_n=3, window=20)
    b = cost.Blocks.from_config(cfg)
    n = blocks.n_cmp(T, cfg)
    assert cost.pairs_cmp(T, b) == int(blocks.cmp_visible_mask(T, n, cfg).sum())
    assert cost.pairs_win(T, b) == int(window_mask(T, T, cfg).sum())
    scores = np.random.default_rng(T).random((T, 1, blocks.n_slc_blocks(T, cfg)))
    indices = top_n(scores, np.arange(T), cfg)
    assert cost.pairs_slc(T, b) == int(selected_mask(indices, T, cfg).sum())
    M = blocks.overlap_matrix(n, blocks.n_slc_blocks(T, cfg), cfg).to_dense()
    visible = blocks.n_cmp_visible(np.arange(T), cfg)
    assert cost.mapping_nonzeros(np.arange(1, T + 1), b) == sum(int((M[:v] > 0).sum()) for v in visible)


def test_paper_decode_byte_ratio_tracks_table4():
    """At the paper's sizes the decode byte ratio is the token ratio up to q/o/lse traffic."""
    cfg = NSAConfig()
    b = cost.Blocks.from_config(cfg)
    for S_len, table4 in [(8192, 4.0), (16384, 6.4), (32768, 9.1), (65536, 11.6)]:
        s = cost.Shape(1, S_len, 64, 4, 128, 128, 2)
        ratio = cost.dense_decode(s).total_bytes / cost.nsa_decode(s, b).total_bytes
        tokens = S_len / counters.tokens_read_exact(S_len, cfg)
        assert ratio == pytest.approx(tokens, rel=0.01)
        assert ratio == pytest.approx(table4, abs=0.06)
