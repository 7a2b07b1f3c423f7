"""A decoder-only LM: embedding, pre-norm blocks (RMSNorm, attention, RMSNorm, SwiGLU), tied head.

Attention is `nsa_torch.NSAAttention` or `DenseAttention`, which has the same q/k/v/o projections
and RoPE and runs `scaled_dot_product_attention(is_causal=True)` (query and key lengths are equal
here, so its top-left aligned mask is the causal one). For generation, `LM(ids, caches=...)` takes
one cache per block: `nsa_torch.NSACache` for NSA, `DenseCache` for dense attention; the first call
is the prefill, each later one a decode step of one token per sequence.
"""

from __future__ import annotations

import torch
from nsa_spec import NSAConfig
from nsa_spec.errors import InvalidInputError
from nsa_torch import NSAAttention, NSACache
from nsa_torch.ops.combine import gate_activation
from nsa_torch.rope import apply_rope
from torch import Tensor, nn
from torch.nn import functional

from nsa_train.config import ModelConfig
from nsa_train.dense_cache import DenseCache
from nsa_train.tokenizer import IGNORE, VOCAB_SIZE

ATTENTIONS = ("nsa", "dense")


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(width, hidden, bias=False)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(functional.silu(self.gate(x)) * self.up(x))


class DenseAttention(nn.Module):
    """Full causal attention with NSAAttention's q/k/v/o shapes and RoPE: x [B, T, W] -> [B, T, W]."""

    def __init__(self, width: int, heads: int, kv_heads: int, head_dim: int, rope_base: float) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.rope_base = heads, kv_heads, head_dim, rope_base
        self.q_proj = nn.Linear(width, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(width, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(width, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, width, bias=False)

    def forward(self, x: Tensor, cache: DenseCache | None = None) -> Tensor:
        """Without `cache` or with an empty one (then filled): causal attention over positions
        0..T-1. With a filled one: x holds one token per sequence, at position `cache.lengths[b]`."""
        B, T, _ = x.shape
        decoding = cache is not None and cache.k is not None
        positions = cache.lengths[:, None] if decoding else torch.arange(T, device=x.device)
        q = apply_rope(self.q_proj(x).view(B, T, self.heads, self.head_dim), positions, self.rope_base)
        k = apply_rope(self.k_proj(x).view(B, T, self.kv_heads, self.head_dim), positions, self.rope_base)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, D]
        if decoding:
            # The G = heads / kv_heads queries of a group share its keys, values and mask: they are
            # its G query rows, so the step reads each group's cache once (no GQA expansion).
            mask = cache.append(k, v)  # [B, 1, 1, capacity]
            groups = q.reshape(B, self.kv_heads, self.heads // self.kv_heads, self.head_dim)  # [B, H, G, D]
            o = functional.scaled_dot_product_attention(groups, cache.k, cache.v, attn_mask=mask)
            o = o.reshape(B, self.heads, 1, self.head_dim)
        else:
            o = functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                       enable_gqa=self.heads != self.kv_heads)
            if cache is not None:
                cache.fill(k, v)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.heads * self.head_dim))


def make_attention(cfg: ModelConfig) -> nn.Module:
    if cfg.attention == "dense":
        return DenseAttention(cfg.width, cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.rope_base)
    if cfg.attention == "nsa":
        nsa = NSAConfig(cmp_len=cfg.cmp_len, cmp_stride=cfg.cmp_stride, slc_len=cfg.slc_len,
                        top_n=cfg.top_n, window=cfg.window, gate=cfg.gate)
        return NSAAttention(cfg.width, cfg.heads, num_kv_heads=cfg.kv_heads, head_dim=cfg.head_dim,
                            config=nsa, phi=cfg.phi, rope_base=cfg.rope_base, backend=cfg.backend)
    raise InvalidInputError(f"model.attention must be one of {ATTENTIONS}: got {cfg.attention!r}")


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.attn = make_attention(cfg)
        self.mlp_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.width, cfg.mlp_hidden)

    def forward(self, x: Tensor, cache: NSACache | DenseCache | None = None) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cache=cache)
        return x + self.mlp(self.mlp_norm(x))


class LM(nn.Module):
    """ids [B, T] -> logits [B, T, vocab]; with targets [B, T] (IGNORE where no loss), the mean
    next-token cross-entropy instead (one call, so DDP sees a single forward). With `caches` (one
    per block), a prefill or a decode step (module docstring)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int = VOCAB_SIZE) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab_size, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.head = nn.Linear(cfg.width, vocab_size, bias=False)
        self.head.weight = self.embed.weight
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=cfg.init_std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, ids: Tensor, targets: Tensor | None = None,
                caches: list[NSACache | DenseCache] | None = None) -> Tensor:
        if caches is not None and len(caches) != len(self.blocks):
            raise InvalidInputError(
                f"caches must hold one cache per block: len(caches)={len(caches)}, layers={len(self.blocks)}"
            )
        x = self.embed(ids)
        for index, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[index])
        logits = self.head(self.norm(x))
        if targets is None:
            return logits
        return functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)


class GateRecorder:
    """Per-layer gate values of the NSA layers of `model`, read by forward hooks on their gate MLPs.

    After a forward, `means()` is [layers][3] (cmp, slc, win) and `histograms(bins)` [layers][3][bins]
    counts over [0, 1]. Dense models have no gates: both are empty.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, NSAAttention)]
        self.values: list[Tensor | None] = [None] * len(self.layers)
        for index, layer in enumerate(self.layers):
            layer.gate.register_forward_hook(self._hook(index, layer))

    def _hook(self, index: int, layer: NSAAttention):
        def record(module: nn.Module, inputs: tuple, logits: Tensor) -> None:
            logits = logits.detach().float().unflatten(-1, (layer.num_heads, 3))
            gates = gate_activation(logits, layer.config.gate)
            self.values[index] = gates.reshape(-1, 3)

        return record

    def means(self) -> list[list[float]]:
        return [v.mean(0).tolist() for v in self.values if v is not None]

    def histograms(self, bins: int = 10) -> list[list[list[int]]]:
        return [[torch.histc(v[:, b], bins=bins, min=0.0, max=1.0).long().tolist() for b in range(3)]
                for v in self.values if v is not None]


def parameter_count(model: nn.Module) -> int:
    """Distinct parameters (the tied head counted once)."""
    return sum(p.numel() for p in model.parameters())
