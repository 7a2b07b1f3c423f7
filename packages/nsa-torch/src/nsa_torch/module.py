"""`NSAAttention`: a drop-in decoder-only attention layer with Native Sparse Attention.

    y = layer(x)                      # training / full forward: x [B, T, d_model] -> [B, T, d_model]
    cache = NSACache()
    y = layer(prompt, cache=cache)    # prefill: attends over the prompt and fills the cache
    y = layer(token, cache=cache)     # decode: x [B, 1, d_model], sequence b at position cache.lengths[b]
    y = layer(packed, cu_seqlens=cu)  # packed sequences: x [1, T_total, d_model], no padding

Per layer: a query projection and one key/value projection per branch (cmp, slc, win; or one
shared pair with `shared_kv=True`), RoPE on q and on each branch's raw keys at absolute
positions (before compression), phi for the compressed branch (by name from `nsa_torch.phi.PHIS`),
a gate MLP on x (sigmoid or softmax by `config.gate`), GQA, an output projection. Attention runs
on the backend named by `backend` or the highest-priority one that supports the call.

Decode steps are inference only: a step with a non-empty cache raises `InvalidInputError` while
gradients are enabled and a parameter (or x) requires grad; wrap generation in `torch.no_grad()`
or `torch.inference_mode()`, and train with the full forward. A prefill may run under autograd
(its output is differentiable); the cache holds detached tensors.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch
from nsa_spec.config import NSAConfig, check_config
from nsa_spec.contract import BRANCHES, NSAOutput, check_cu_seqlens
from nsa_spec.errors import InvalidInputError, UnsupportedError
from torch import Tensor, nn

from nsa_torch.cache import NSACache
from nsa_torch.dispatch import backend_for, problem_for
from nsa_torch.functional import nsa_attention
from nsa_torch.ops.combine import gate_activation
from nsa_torch.ops.compress import cmp_blocks
from nsa_torch.phi import make_phi
from nsa_torch.rope import apply_rope, apply_rotary
from nsa_torch.tensors import host_cu_seqlens


def _check_size(name: str, value: Any, default: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name} must be a positive int: {name}={value!r}{default}")
    return value


def _packed_positions(cu: np.ndarray, B: int, T: int) -> np.ndarray:
    """Positions restarting at 0 in each packed sequence of host offsets `cu` (checked here)."""
    cu = check_cu_seqlens(cu, B, T)
    return np.arange(T) - np.repeat(cu[:-1], np.diff(cu))


class NSAAttention(nn.Module):
    """Native Sparse Attention layer: x [B, T, d_model] -> [B, T, d_model].

    Args:
        d_model: model width.
        num_heads: query heads HQ.
        num_kv_heads: key/value heads H per branch (GQA; must divide num_heads). Default HQ.
        head_dim: dk (even, for RoPE). Default d_model // num_heads.
        v_head_dim: dv. Default head_dim.
        config: block sizes and gate kind (`nsa_spec.NSAConfig`); None for the paper's.
        phi: name of the compression function in `nsa_torch.phi.PHIS` ("mlp", "mean", ...).
        phi_hidden: hidden width of phi "mlp". Default 2 * head_dim.
        shared_kv: one key/value projection shared by the three branches.
        gate_hidden: hidden width of the gate MLP. Default d_model.
        rope_base: RoPE base.
        backend: backend name, or None for automatic choice.
        bias: biases in the q/k/v/o projections.
    """

    def __init__(
        self, d_model: int, num_heads: int, num_kv_heads: int | None = None, head_dim: int | None = None,
        v_head_dim: int | None = None, config: NSAConfig | None = None, phi: str = "mlp",
        phi_hidden: int | None = None, shared_kv: bool = False, gate_hidden: int | None = None,
        rope_base: float = 10000.0, backend: str | None = None, bias: bool = False,
    ) -> None:
        super().__init__()
        self.d_model = _check_size("d_model", d_model)
        self.num_heads = _check_size("num_heads", num_heads)
        self.num_kv_heads = num_heads if num_kv_heads is None else _check_size("num_kv_heads", num_kv_heads)
        if num_heads % self.num_kv_heads:
            raise InvalidInputError(
                f"num_kv_heads must divide num_heads (GQA): num_heads={num_heads}, "
                f"num_kv_heads={self.num_kv_heads}"
            )
        if head_dim is None:
            head_dim = _check_size("head_dim", d_model // num_heads, " (default d_model // num_heads)")
        self.head_dim = _check_size("head_dim", head_dim)
        self.v_head_dim = self.head_dim if v_head_dim is None else _check_size("v_head_dim", v_head_dim)
        if self.head_dim % 2:
            raise InvalidInputError(f"head_dim must be even (RoPE): head_dim={self.head_dim}")
        self.config = NSAConfig() if config is None else check_config(config)
        if isinstance(rope_base, bool) or not isinstance(rope_base, (int, float)) or not (
            math.isfinite(rope_base) and rope_base > 0
        ):
            raise InvalidInputError(f"rope_base must be a finite number > 0: rope_base={rope_base!r}")
        self.rope_base = rope_base
        self.backend = backend
        self.shared_kv = shared_kv
        HQ, H, dk, dv = num_heads, self.num_kv_heads, self.head_dim, self.v_head_dim
        self.q_proj = nn.Linear(d_model, HQ * dk, bias=bias)
        streams = ("shared",) if shared_kv else BRANCHES
        self.k_proj = nn.ModuleDict({s: nn.Linear(d_model, H * dk, bias=bias) for s in streams})
        self.v_proj = nn.ModuleDict({s: nn.Linear(d_model, H * dv, bias=bias) for s in streams})
        hidden = 2 * dk if phi_hidden is None else _check_size("phi_hidden", phi_hidden)
        self.phi_k = make_phi(phi, self.config.cmp_len, dk, hidden)
        self.phi_v = make_phi(phi, self.config.cmp_len, dv, hidden)
        gate_hidden = d_model if gate_hidden is None else _check_size("gate_hidden", gate_hidden)
        self.gate = nn.Sequential(nn.Linear(d_model, gate_hidden), nn.SiLU(), nn.Linear(gate_hidden, HQ * 3))
        self.o_proj = nn.Linear(HQ * dv, d_model, bias=bias)

    def streams(
        self, x: Tensor, positions: Tensor, rotary: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]], Tensor]:
        """q [B, T, HQ, dk], raw (k, v) per branch [B, T, H, .] with RoPE on keys, gates [B, T, HQ, 3].

        RoPE is the layer's own at `positions`, or the precomputed (cos, sin) `rotary`.
        """
        B, T, _ = x.shape
        H = self.num_kv_heads

        def rope(t: Tensor) -> Tensor:
            return apply_rope(t, positions, self.rope_base) if rotary is None else apply_rotary(t, *rotary)

        q = rope(self.q_proj(x).view(B, T, self.num_heads, self.head_dim))
        kv = {}
        for branch in BRANCHES:
            stream = "shared" if self.shared_kv else branch
            k = rope(self.k_proj[stream](x).view(B, T, H, self.head_dim))
            kv[branch] = (k, self.v_proj[stream](x).view(B, T, H, self.v_head_dim))
        gates = gate_activation(self.gate(x).view(B, T, self.num_heads, 3), self.config.gate).to(q.dtype)
        return q, kv, gates

    def forward(
        self, x: Tensor, cache: NSACache | None = None, return_aux: bool = False, cu_seqlens: Any = None,
        rotary: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor | tuple[Tensor, NSAOutput]:
        """x [B, T, d_model] -> [B, T, d_model].

        Without `cache`: causal NSA over the T tokens (positions 0..T-1). With an empty `cache`:
        the same, and the cache is filled. With a non-empty `cache`: x must hold one token per
        sequence, sequence b's at position `cache.lengths[b]` (sequences joined into one cache
        may differ in length); it is appended and attends over its own sequence (`cache.reads`
        then holds the tokens that step read). With `cu_seqlens` (int [n_seq + 1] offsets, B = 1):
        x packs sequences of different lengths along T; each has its own positions from 0 and
        its own compressed tokens, and no token sees another sequence (no cache). With
        `return_aux`, also returns the attention's `NSAOutput` (o before the output
        projection, per-branch lse, selected block indices). With `rotary` (cos, sin)
        [B or 1, T, head_dim], q and keys are rotated by those tables (a host model's RoPE, at
        the positions it chose) instead of the layer's own RoPE.
        """
        if x.dim() != 3 or x.shape[1] < 1 or x.shape[2] != self.d_model:
            raise InvalidInputError(
                f"x must have shape [B, T, d_model] with T >= 1 and d_model={self.d_model}: "
                f"x.shape={tuple(x.shape)}"
            )
        if cache is not None and not isinstance(cache, NSACache):
            raise InvalidInputError(
                f"cache must be an nsa_torch.NSACache or None: got {type(cache).__name__}"
            )
        config = check_config(self.config)
        B, T, _ = x.shape
        cu = host_cu_seqlens(cu_seqlens)
        if cu is not None and cache is not None:
            raise UnsupportedError(
                "cu_seqlens with a cache is not supported: prefill each sequence into its own NSACache "
                "and join() them (sequences of different lengths then decode together)"
            )
        decoding = cache is not None and cache.state is not None
        if decoding:
            self._check_decode(x, cache.length)
            cache.check_batch(B)
            positions = cache.lengths[:, None].to(x.device)  # [B, 1]: each sequence at its own length
        elif cu is None:
            positions = torch.arange(T, device=x.device)
        else:
            positions = torch.from_numpy(_packed_positions(cu, B, T)).to(x.device)
        q, kv, gates = self.streams(x, positions, rotary)
        (k_raw, v_raw), (k_slc, v_slc), (k_win, v_win) = (kv[b] for b in BRANCHES)
        if decoding:
            aux = self._decode(cache, q, k_raw, v_raw, k_slc, v_slc, k_win, v_win, gates)
        else:
            k_cmp, v_cmp = self._compress(self.phi_k, k_raw, cu), self._compress(self.phi_v, v_raw, cu)
            aux = nsa_attention(
                q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates, config, cu_seqlens=cu,
                backend=self.backend, return_aux=True,
            )
            if cache is not None:
                cache.fill(k_raw, v_raw, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, config)
        y = self.o_proj(aux.o.reshape(B, T, self.num_heads * self.v_head_dim))
        return (y, aux) if return_aux else y

    def _compress(self, phi: nn.Module, raw: Tensor, cu: np.ndarray | None) -> Tensor:
        """phi over the raw cmp stream [B, T, H, D]; packed sequences one by one, in order. In raw's
        dtype: under autocast, phi's float32 parameters (its position embedding) would promote it."""
        if cu is None:
            return phi(cmp_blocks(raw, self.config)).to(raw.dtype)
        pieces = [raw[:, int(lo) : int(hi)] for lo, hi in itertools.pairwise(cu)]
        return torch.cat([phi(cmp_blocks(piece, self.config)) for piece in pieces], 1).to(raw.dtype)

    def _check_decode(self, x: Tensor, start: int) -> None:
        """A decode step takes one token and runs without autograd."""
        if x.shape[1] != 1:
            raise InvalidInputError(
                f"a non-empty cache takes one token per call: x.shape={tuple(x.shape)}, "
                f"cache.length={start}"
            )
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            raise InvalidInputError(
                "decode steps are inference only: gradients are enabled and the layer's parameters "
                f"(or x) require grad at cache.length={start}; wrap generation in torch.no_grad() or "
                "torch.inference_mode() (train with the full forward, without a cache)"
            )

    def _decode(self, cache: NSACache, q: Tensor, k_raw: Tensor, v_raw: Tensor, k_slc: Tensor,
                v_slc: Tensor, k_win: Tensor, v_win: Tensor, gates: Tensor) -> NSAOutput:
        state = cache.append(k_raw, v_raw, k_slc, v_slc, k_win, v_win, self.config, self.phi_k, self.phi_v)
        problem = problem_for("decode", q, self.num_kv_heads, self.v_head_dim, self.config,
                              tokens=cache.length)
        backend = backend_for(problem, self.backend)
        result = backend.decode(state, q, gates, self.config)
        cache.reads = result.reads
        return result.out
