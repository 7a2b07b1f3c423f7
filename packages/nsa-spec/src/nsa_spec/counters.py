"""Tokens read by one decode step (NSA.md, Decode): the exact count and the paper's Table 4."""

from __future__ import annotations

from nsa_spec.blocks import n_cmp, n_slc_blocks
from nsa_spec.config import NSAConfig
from nsa_spec.errors import InvalidInputError


def _check_length(length: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise InvalidInputError(f"length must be an int >= 1 (tokens in the cache): length={length!r}")


def selected_tokens(length: int, config: NSAConfig) -> int:
    """Raw tokens in the n selected blocks of the last query of a `length`-token cache.

    All blocks are full except the current one, which holds tokens up to the query; the current
    block is always selected, so the count does not depend on which other blocks win.
    """
    _check_length(length)
    blocks = n_slc_blocks(length, config)
    if blocks <= config.top_n:
        return length
    current_fill = length - (blocks - 1) * config.slc_len
    return (config.top_n - 1) * config.slc_len + current_fill


def tokens_read_exact(length: int, config: NSAConfig) -> int:
    """N_cmp(S) + selected tokens clamped to S + min(w, S): what one decode step must read."""
    _check_length(length)
    return n_cmp(length, config) + selected_tokens(length, config) + min(config.window, length)


def tokens_read_table4(length: int, config: NSAConfig) -> int:
    """The paper's Table 4 rounding: S/d + n*l' + w (exact when S is a multiple of d)."""
    _check_length(length)
    return length // config.cmp_stride + config.top_n * config.slc_len + config.window


def dense_tokens_read(length: int) -> int:
    """Dense attention reads every cached token."""
    _check_length(length)
    return length
