"""The sliding-window branch: query t attends to keys max(0, t - w + 1) .. t of the win stream."""

from __future__ import annotations

from typing import Any

import numpy as np

from nsa_spec.config import NSAConfig
from nsa_spec.reference.attention import attend


def window_mask(n_queries: int, n_keys: int, config: NSAConfig) -> np.ndarray:
    """Bool [T, S]: key s is allowed for query t iff t - w < s <= t."""
    t = np.arange(n_queries)[:, None]
    s = np.arange(n_keys)[None, :]
    return (s <= t) & (s > t - config.window)


def window_attention(q: Any, k_win: Any, v_win: Any, config: NSAConfig, xp: Any = np) -> tuple[Any, Any]:
    """The sliding branch for one batch element: q [T, HQ, dk], k/v [T, H, .] -> o, lse."""
    allowed = window_mask(q.shape[0], k_win.shape[0], config)[None]
    return attend(q, k_win, v_win, allowed, config.softmax_scale(q.shape[-1]), xp)
