"""Attention of queries over an explicitly masked key set (NSA.md, "Attention of one query").

`Attn(q, K, V) = softmax(scale * q K^T) V` over the keys a boolean mask allows (True = may
attend). Over an empty key set the output is the zero vector and the log-sum-exp is -inf, never
NaN. Every function takes `xp` (NumPy, or `jax.numpy` for the gradient oracle) and uses only
operations both provide, so the math is written once.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def attention_probs(q: Any, k: Any, allowed: Any, scale: float, xp: Any = np) -> tuple[Any, Any]:
    """Softmax weights of grouped queries over masked keys, for one batch element.

    Args:
        q: [T, HQ, dk]; query head h belongs to key/value head h // G.
        k: [S, H, dk].
        allowed: bool, broadcastable to [H, T, S].
        scale: softmax scale.

    Returns:
        p [H, G, T, S] (rows over an empty key set are all zero) and lse [T, HQ].
    """
    T, HQ, dk = q.shape
    H = k.shape[1]
    G = HQ // H
    qg = xp.reshape(q, (T, H, G, dk))
    scores = scale * xp.einsum("thgd,shd->hgts", qg, k)  # [H, G, T, S]
    mask = xp.broadcast_to(xp.asarray(allowed)[:, None], scores.shape)
    row_max = xp.max(xp.where(mask, scores, -xp.inf), axis=-1, keepdims=True, initial=-xp.inf)
    row_max = xp.where(xp.isfinite(row_max), row_max, 0.0)
    p = xp.exp(xp.where(mask, scores - row_max, -xp.inf))
    total = xp.sum(p, axis=-1, keepdims=True)
    nonempty = total > 0
    p = p / xp.where(nonempty, total, 1.0)
    lse = xp.where(nonempty, row_max + xp.log(xp.where(nonempty, total, 1.0)), -xp.inf)
    lse = xp.transpose(xp.reshape(lse[..., 0], (HQ, T)), (1, 0))  # [H, G, T] -> [T, HQ]
    return p, lse


def attend(q: Any, k: Any, v: Any, allowed: Any, scale: float, xp: Any = np) -> tuple[Any, Any]:
    """Masked attention for one batch element: q [T, HQ, dk], k [S, H, dk], v [S, H, dv].

    Returns o [T, HQ, dv] (zero over an empty key set) and lse [T, HQ] (-inf there).
    """
    p, lse = attention_probs(q, k, allowed, scale, xp)
    T, HQ = q.shape[:2]
    o = xp.einsum("hgts,shd->thgd", p, v)
    return xp.reshape(o, (T, HQ, v.shape[-1])), lse
