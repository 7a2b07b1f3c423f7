"""Tokens read per decode step (NSA.md, Decode): Table 4, the exact count, and the measured reads."""

from __future__ import annotations

import numpy as np
import pytest
from nsa_spec import DecodeCache, NSAConfig
from nsa_spec.blocks import n_cmp
from nsa_spec.counters import dense_tokens_read, selected_tokens, tokens_read_exact, tokens_read_table4
from nsa_spec.reference import decode_attention, from_streams

# NSA.md's Table 4: cache length, dense reads, the paper's NSA reads.
TABLE4 = [(8192, 8192, 2048), (16384, 16384, 2560), (32768, 32768, 3584), (65536, 65536, 5632)]


def random_cache(config: NSAConfig, length: int, B: int, H: int, dk: int, dv: int, seed: int) -> DecodeCache:
    """A consistent cache of `length` random tokens (compressed tokens from phi 'mean')."""
    rng = np.random.default_rng(seed)
    k_raw, k_slc, k_win = (rng.standard_normal((B, length, H, dk)) for _ in range(3))
    v_raw, v_slc, v_win = (rng.standard_normal((B, length, H, dv)) for _ in range(3))
    return from_streams(k_raw, v_raw, k_slc, v_slc, k_win, v_win, config)


def measured_reads(
    config: NSAConfig, length: int, B: int = 1, H: int = 1, G: int = 1, seed: int = 0
) -> np.ndarray:
    """Tokens `decode_attention` gathered for the newest token of a random `length`-token cache."""
    cache = random_cache(config, length, B, H, dk=2, dv=3, seed=seed)
    rng = np.random.default_rng(seed + 1)
    q = rng.standard_normal((B, 1, H * G, 2))
    return decode_attention(cache, q, np.full((B, 1, H * G, 3), 0.5), config).reads


@pytest.mark.parametrize(("length", "dense", "table4"), TABLE4, ids=[f"S{s}" for s, _, _ in TABLE4])
def test_table4_rows(length, dense, table4):
    cfg = NSAConfig()
    assert dense_tokens_read(length) == dense
    assert tokens_read_table4(length, cfg) == table4
    exact = tokens_read_exact(length, cfg)
    assert table4 - 2 <= exact < table4
    # NSA.md: with S >= n*l' the exact count is floor((S - l)/d) + 1 + n*l' + w.
    assert exact == (length - 32) // 16 + 1 + 16 * 64 + 512


@pytest.mark.parametrize(("length", "dense", "table4"), TABLE4, ids=[f"S{s}" for s, _, _ in TABLE4])
def test_table4_lengths_measured_from_decode(length, dense, table4):
    """The paper's defaults on a real cache: reads gathered by the decode step, per kv head."""
    reads = measured_reads(NSAConfig(), length, B=1, H=2, G=1)
    np.testing.assert_array_equal(reads, np.full((1, 2), tokens_read_exact(length, NSAConfig())))
    assert reads.max() < table4


SMALL = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=16, top_n=3, window=12)
MEASURED = [
    # (length, why this length)
    (1, "T1-below-l"),
    (7, "below-l"),
    (8, "first-cmp-token"),
    (30, "n*l'-covers-S"),
    (48, "n*l'-equals-S"),
    (49, "partial-current-block"),
    (63, "partial-current-block-2"),
    (64, "full-current-block"),
    (101, "long-partial"),
]


@pytest.mark.parametrize(("length", "why"), MEASURED, ids=[f"S{s}-{why}" for s, why in MEASURED])
def test_decode_reads_equal_exact_count(length, why):
    reads = measured_reads(SMALL, length, B=2, H=2, G=2, seed=length)
    assert reads.shape == (2, 2)
    np.testing.assert_array_equal(reads, np.full((2, 2), tokens_read_exact(length, SMALL)))


@pytest.mark.parametrize(
    ("length", "expected"), [(1, 1), (16, 16), (47, 47), (48, 48), (49, 33), (64, 48), (70, 38)]
)
def test_selected_tokens_clamped_to_the_cache(length, expected):
    """n = 3 blocks of 16: all tokens up to 48, then two full blocks plus the current block's fill."""
    assert selected_tokens(length, SMALL) == expected


def test_exact_count_terms():
    """N_cmp + selected + min(w, S) at the small config, term by term."""
    for length in (1, 7, 8, 12, 49, 101):
        assert tokens_read_exact(length, SMALL) == (
            n_cmp(length, SMALL) + selected_tokens(length, SMALL) + min(12, length)
        )
    assert tokens_read_exact(49, SMALL) == 11 + 33 + 12
