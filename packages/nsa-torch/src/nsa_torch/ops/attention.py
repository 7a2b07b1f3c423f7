"""Attention of query chunks over an explicitly masked key set (NSA.md, "Attention of one query").

Over an empty key set the output is zero and the log-sum-exp -inf, with no NaN in the forward
or in gradients: rows that may be empty are softmaxed over zeros and then multiplied by 0. The
log-sum-exp is an auxiliary output and carries no gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor


def attention_probs(
    q: Tensor, k: Tensor, allowed: Tensor, scale: float, may_be_empty: bool = True
) -> tuple[Tensor, Tensor]:
    """Softmax weights of grouped queries over masked keys.

    Args:
        q: [B, C, H, G, dk].
        k: [B, H, S, dk] (one key set for every query of the chunk) or [B, C, H, S, dk] (a
            key set gathered per query).
        allowed: bool, broadcastable to [B, C, H, 1, S]; True = may attend.
        scale: softmax scale.
        may_be_empty: False when the caller knows every query has an allowed key (skips the
            empty-row guard).

    Returns:
        p [B, C, H, G, S] (zero rows over an empty key set) and lse [B, C, H, G].
    """
    q = q * scale
    shared = k.dim() == 4
    scores = torch.einsum("bchgd,bhsd->bchgs", q, k) if shared else torch.matmul(q, k.transpose(-1, -2))
    if scores.shape[-1] == 0:
        return scores, scores.new_full(scores.shape[:-1], float("-inf"))
    scores = scores.masked_fill(~allowed, float("-inf"))
    with torch.no_grad():
        lse = torch.logsumexp(scores, dim=-1)
    if not may_be_empty:
        return torch.softmax(scores, dim=-1), lse
    nonempty = torch.isfinite(lse)[..., None]
    p = torch.softmax(torch.where(nonempty, scores, torch.zeros_like(scores)), dim=-1)
    return p * nonempty, lse


def attend(
    q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scale: float, may_be_empty: bool = True
) -> tuple[Tensor, Tensor]:
    """Masked attention: q [B, C, H, G, dk]; k/v [B, H, S, d] or [B, C, H, S, d].

    Returns o [B, C, H, G, dv] (zero over an empty key set) and lse [B, C, H, G] (-inf there).
    """
    p, lse = attention_probs(q, k, allowed, scale, may_be_empty)
    o = torch.einsum("bchgs,bhsd->bchgd", p, v) if v.dim() == 4 else torch.matmul(p, v)
    return o, lse
