"""Attention of query chunks over an explicitly masked key set (NSA.md, "Attention of one query").

Over an empty key set the output is zero and the log-sum-exp -inf, with no NaN in the forward
or in gradients: masked scores are filled with -inf after scaling, the row maximum is taken over
allowed keys only and replaced by 0 where none is allowed.
"""

from __future__ import annotations

import torch
from torch import Tensor


def attention_probs(q: Tensor, k: Tensor, allowed: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Softmax weights of grouped queries over masked keys.

    Args:
        q: [B, C, H, G, dk].
        k: [B, H, S, dk] (one key set for every query of the chunk) or [B, C, H, S, dk] (a
            key set gathered per query).
        allowed: bool, broadcastable to [B, C, H, 1, S]; True = may attend.
        scale: softmax scale.

    Returns:
        p [B, C, H, G, S] (zero rows over an empty key set) and lse [B, C, H, G].
    """
    shared = k.dim() == 4
    scores = torch.einsum("bchgd,bhsd->bchgs", q, k) if shared else torch.matmul(q, k.transpose(-1, -2))
    if scores.shape[-1] == 0:
        return scores, scores.new_full(scores.shape[:-1], float("-inf"))
    scores = (scores * scale).masked_fill(~allowed, float("-inf"))
    # The softmax does not depend on the shift, so the maximum carries no gradient.
    row_max = scores.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    p = torch.exp(scores - row_max)
    total = p.sum(dim=-1, keepdim=True)
    nonempty = total > 0
    safe_total = torch.where(nonempty, total, torch.ones_like(total))
    p = p / safe_total
    lse = torch.where(nonempty, row_max + torch.log(safe_total), torch.full_like(total, float("-inf")))
    return p, lse[..., 0]


def attend(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Masked attention: q [B, C, H, G, dk]; k/v [B, H, S, d] or [B, C, H, S, d].

    Returns o [B, C, H, G, dv] (zero over an empty key set) and lse [B, C, H, G] (-inf there).
    """
    p, lse = attention_probs(q, k, allowed, scale)
    o = torch.einsum("bchgs,bhsd->bchgd", p, v) if v.dim() == 4 else torch.matmul(p, v)
    return o, lse
