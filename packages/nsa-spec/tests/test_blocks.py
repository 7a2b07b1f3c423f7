"""Block math (NSA.md, Compression and Top-n): N_cmp, visibility, forced blocks, the Eq. 9 table."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from nsa_spec import NSAConfig
from nsa_spec.blocks import (
    cmp_cu_seqlens,
    cmp_visible_mask,
    current_block,
    forced_blocks,
    n_cmp,
    n_cmp_visible,
    n_slc_blocks,
    overlap_matrix,
)
from spec_cases import configs

# Eq. 9 for (l, d, l') = (32, 16, 64), 15 compressed tokens (a 256-token prefix) and 5 blocks.
# Token i covers raw [16i, 16i+32); block j covers [64j, 64j+64); M[i, j] = overlap / 16.
# Block j takes tokens 4j-1 .. 4j+3 with weights 1, 2, 2, 2, 1 where they exist; block 4 has none.
EQ9_32_16_64 = np.array([
    # j=0 j=1 j=2 j=3 j=4
    [2, 0, 0, 0, 0],  # i=0   [0, 32)
    [2, 0, 0, 0, 0],  # i=1   [16, 48)
    [2, 0, 0, 0, 0],  # i=2   [32, 64)
    [1, 1, 0, 0, 0],  # i=3   [48, 80)
    [0, 2, 0, 0, 0],  # i=4   [64, 96)
    [0, 2, 0, 0, 0],  # i=5   [80, 112)
    [0, 2, 0, 0, 0],  # i=6   [96, 128)
    [0, 1, 1, 0, 0],  # i=7   [112, 144)
    [0, 0, 2, 0, 0],  # i=8   [128, 160)
    [0, 0, 2, 0, 0],  # i=9   [144, 176)
    [0, 0, 2, 0, 0],  # i=10  [160, 192)
    [0, 0, 1, 1, 0],  # i=11  [176, 208)
    [0, 0, 0, 2, 0],  # i=12  [192, 224)
    [0, 0, 0, 2, 0],  # i=13  [208, 240)
    [0, 0, 0, 2, 0],  # i=14  [224, 256)
], dtype=float)
EQ9_32_16_64_CSR = (
    [0, 4, 9, 14, 18, 18],
    [0, 1, 2, 3, 3, 4, 5, 6, 7, 7, 8, 9, 10, 11, 11, 12, 13, 14],
    [2, 2, 2, 1, 1, 2, 2, 2, 1, 1, 2, 2, 2, 1, 1, 2, 2, 2],
)

# Eq. 9 for (l, d, l') = (16, 8, 64), 17 compressed tokens (a 150-token prefix) and 3 blocks.
# Token i covers [8i, 8i+16); block j takes tokens 8j-1 .. 8j+7 with weights 1, 2 (x7), 1.
EQ9_16_8_64 = np.array([
    # j=0 j=1 j=2
    [2, 0, 0],  # i=0   [0, 16)
    [2, 0, 0],  # i=1   [8, 24)
    [2, 0, 0],  # i=2   [16, 32)
    [2, 0, 0],  # i=3   [24, 40)
    [2, 0, 0],  # i=4   [32, 48)
    [2, 0, 0],  # i=5   [40, 56)
    [2, 0, 0],  # i=6   [48, 64)
    [1, 1, 0],  # i=7   [56, 72)
    [0, 2, 0],  # i=8   [64, 80)
    [0, 2, 0],  # i=9   [72, 88)
    [0, 2, 0],  # i=10  [80, 96)
    [0, 2, 0],  # i=11  [88, 104)
    [0, 2, 0],  # i=12  [96, 112)
    [0, 2, 0],  # i=13  [104, 120)
    [0, 2, 0],  # i=14  [112, 128)
    [0, 1, 1],  # i=15  [120, 136)
    [0, 0, 2],  # i=16  [128, 144)
], dtype=float)
EQ9_16_8_64_CSR = (
    [0, 8, 17, 19],
    [0, 1, 2, 3, 4, 5, 6, 7, 7, 8, 9, 10, 11, 12, 13, 14, 15, 15, 16],
    [2, 2, 2, 2, 2, 2, 2, 1, 1, 2, 2, 2, 2, 2, 2, 2, 1, 1, 2],
)

EQ9_CASES = [
    pytest.param((32, 16, 64), 256, 15, 5, EQ9_32_16_64, EQ9_32_16_64_CSR, id="l32-d16-l'64-S256"),
    pytest.param((16, 8, 64), 150, 17, 3, EQ9_16_8_64, EQ9_16_8_64_CSR, id="l16-d8-l'64-S150"),
]


@pytest.mark.parametrize(("blocks", "length", "tokens", "n_blocks", "dense", "csr"), EQ9_CASES)
def test_overlap_matrix_matches_hand_computed_table(blocks, length, tokens, n_blocks, dense, csr):
    l, d, l_slc = blocks
    cfg = NSAConfig(cmp_len=l, cmp_stride=d, slc_len=l_slc)
    assert n_cmp(length, cfg) == tokens
    M = overlap_matrix(tokens, n_blocks, cfg)
    np.testing.assert_array_equal(M.to_dense(), dense)
    np.testing.assert_array_equal(M.indptr, csr[0])
    np.testing.assert_array_equal(M.indices, csr[1])
    np.testing.assert_array_equal(M.weights, csr[2])
    assert M.indptr.dtype == np.int64 and M.indices.dtype == np.int64 and M.weights.dtype == np.float64


@given(cfg=configs())
def test_overlap_weights_count_each_raw_token_once(cfg):
    """Every row of M sums to l/d: each compressed token's l raw tokens land in some block."""
    tokens = 9
    n_blocks = n_slc_blocks((tokens - 1) * cfg.cmp_stride + cfg.cmp_len, cfg)
    M = overlap_matrix(tokens, n_blocks, cfg).to_dense()
    np.testing.assert_array_equal(M.sum(axis=1), np.full(tokens, cfg.cmp_len / cfg.cmp_stride))


@pytest.mark.parametrize(
    ("length", "expected"),
    [(0, 0), (1, 0), (31, 0), (32, 1), (47, 1), (48, 2), (100, 5), (8192, 511), (65536, 4095)],
)
def test_n_cmp_paper_defaults(length, expected):
    assert n_cmp(length, NSAConfig()) == expected


@given(cfg=configs())
def test_visibility_is_n_cmp_of_the_prefix(cfg):
    """Query t sees exactly the N_cmp(t + 1) tokens with i*d + l <= t + 1."""
    T = 3 * cfg.slc_len + 5
    N = n_cmp(T, cfg)
    mask = cmp_visible_mask(T, N, cfg)
    for t in range(T):
        expected = [i for i in range(N) if i * cfg.cmp_stride + cfg.cmp_len <= t + 1]
        assert np.nonzero(mask[t])[0].tolist() == expected
        assert len(expected) == n_cmp(t + 1, cfg) == int(n_cmp_visible(t, cfg))


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (0, [0]), (63, [0]), (64, [0, 1]), (127, [0, 1]), (128, [0, 1, 2]), (200, [0, 2, 3]),
        (1000, [0, 14, 15]),
    ],
)
def test_forced_blocks(t, expected):
    cfg = NSAConfig()
    assert forced_blocks(t, cfg).tolist() == expected
    assert int(current_block(t, cfg)) == t // 64


def test_slc_blocks_and_packed_offsets():
    cfg = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=16, top_n=3, window=8)
    assert [n_slc_blocks(s, cfg) for s in (1, 16, 17, 32, 33)] == [1, 1, 2, 2, 3]
    # lengths 7, 8, 13 -> N_cmp 0, 1, 2
    assert cmp_cu_seqlens(np.array([0, 7, 15, 28]), cfg).tolist() == [0, 0, 1, 3]
