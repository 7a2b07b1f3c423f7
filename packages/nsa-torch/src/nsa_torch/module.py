"""`NSAAttention`: a drop-in decoder-only attention layer with Native Sparse Attention.

    y = layer(x)                      # training / full forward: x [B, T, d_model] -> [B, T, d_model]
    cache = NSACache()
    y = layer(prompt, cache=cache)    # prefill: attends over the prompt and fills the cache
    y = layer(token, cache=cache)     # decode: x [B, 1, d_model], continues at position cache.length

Per layer: a query projection and one key/value projection per branch (cmp, slc, win; or one
shared pair with `shared_kv=True`), RoPE on q and on each branch's raw keys at absolute
positions (before compression), phi for the compressed branch (by name from `nsa_torch.phi.PHIS`),
a gate MLP on x (sigmoid or softmax by `config.gate`), GQA, an output projection. Attention runs
on the backend named by `backend` or the highest-priority one that supports the call.
Decode steps are inference: they run under `torch.no_grad()` and the cache holds detached tensors.
"""

from __future__ import annotations

import torch
from nsa_spec.config import NSAConfig
from nsa_spec.contract import NSAOutput
from nsa_spec.errors import InvalidInputError
from torch import Tensor, nn

from nsa_torch.cache import NSACache
from nsa_torch.dispatch import backend_for, problem_for
from nsa_torch.functional import nsa_attention
from nsa_torch.ops.combine import gate_activation
from nsa_torch.ops.compress import cmp_blocks
from nsa_torch.phi import make_phi
from nsa_torch.rope import apply_rope

BRANCHES = ("cmp", "slc", "win")


class NSAAttention(nn.Module):
    """Native Sparse Attention layer: x [B, T, d_model] -> [B, T, d_model].

    Args:
        d_model: model width.
        num_heads: query heads HQ.
        num_kv_heads: key/value heads H per branch (GQA; must divide num_heads). Default HQ.
        head_dim: dk (even, for RoPE). Default d_model // num_heads.
        v_head_dim: dv. Default head_dim.
        config: block sizes and gate kind (`nsa_spec.NSAConfig`); defaults are the paper's.
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
        self.num_heads = num_heads
        self.num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if self.num_kv_heads < 1 or num_heads % self.num_kv_heads:
            raise InvalidInputError(
                f"num_kv_heads must divide num_heads (GQA): num_heads={num_heads}, "
                f"num_kv_heads={self.num_kv_heads}"
            )
        self.head_dim = d_model // num_heads if head_dim is None else head_dim
        self.v_head_dim = self.head_dim if v_head_dim is None else v_head_dim
        if self.head_dim < 2 or self.head_dim % 2:
            raise InvalidInputError(f"head_dim must be even and >= 2 (RoPE): head_dim={self.head_dim}")
        self.config = (NSAConfig() if config is None else config).validate()
        self.rope_base = rope_base
        self.backend = backend
        self.shared_kv = shared_kv
        HQ, H, dk, dv = num_heads, self.num_kv_heads, self.head_dim, self.v_head_dim
        self.q_proj = nn.Linear(d_model, HQ * dk, bias=bias)
        streams = ("shared",) if shared_kv else BRANCHES
        self.k_proj = nn.ModuleDict({s: nn.Linear(d_model, H * dk, bias=bias) for s in streams})
        self.v_proj = nn.ModuleDict({s: nn.Linear(d_model, H * dv, bias=bias) for s in streams})
        hidden = 2 * dk if phi_hidden is None else phi_hidden
        self.phi_k = make_phi(phi, self.config.cmp_len, dk, hidden)
        self.phi_v = make_phi(phi, self.config.cmp_len, dv, hidden)
        gate_hidden = d_model if gate_hidden is None else gate_hidden
        self.gate = nn.Sequential(nn.Linear(d_model, gate_hidden), nn.SiLU(), nn.Linear(gate_hidden, HQ * 3))
        self.o_proj = nn.Linear(HQ * dv, d_model, bias=bias)

    def streams(
        self, x: Tensor, positions: Tensor
    ) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]], Tensor]:
        """q [B, T, HQ, dk], raw (k, v) per branch [B, T, H, .] with RoPE on keys, gates [B, T, HQ, 3]."""
        B, T, _ = x.shape
        H = self.num_kv_heads
        q = apply_rope(self.q_proj(x).view(B, T, self.num_heads, self.head_dim), positions, self.rope_base)
        kv = {}
        for branch in BRANCHES:
            stream = "shared" if self.shared_kv else branch
            k = apply_rope(self.k_proj[stream](x).view(B, T, H, self.head_dim), positions, self.rope_base)
            kv[branch] = (k, self.v_proj[stream](x).view(B, T, H, self.v_head_dim))
        gates = gate_activation(self.gate(x).view(B, T, self.num_heads, 3), self.config.gate)
        return q, kv, gates

    def forward(
        self, x: Tensor, cache: NSACache | None = None, return_aux: bool = False
    ) -> Tensor | tuple[Tensor, NSAOutput]:
        """x [B, T, d_model] -> [B, T, d_model].

        Without `cache`: causal NSA over the T tokens (positions 0..T-1). With an empty `cache`:
        the same, and the cache is filled. With a non-empty `cache`: x must hold one token, at
        position `cache.length`; it is appended and attends over the cache (`cache.reads` then
        holds the tokens that step read). With `return_aux`, also returns the attention's
        `NSAOutput` (o before the output projection, per-branch lse, selected block indices).
        """
        if x.dim() != 3 or x.shape[1] < 1:
            raise InvalidInputError(
                f"x must have shape [B, T, d_model] with T >= 1: x.shape={tuple(x.shape)}"
            )
        B, T, _ = x.shape
        start = 0 if cache is None else cache.length
        if start and T != 1:
            raise InvalidInputError(
                f"a non-empty cache takes one token per call: x.shape={tuple(x.shape)}, "
                f"cache.length={start}"
            )
        positions = torch.arange(start, start + T, device=x.device)
        q, kv, gates = self.streams(x, positions)
        (k_raw, v_raw), (k_slc, v_slc), (k_win, v_win) = (kv[b] for b in BRANCHES)
        if start:
            aux = self._decode(cache, q, k_raw, v_raw, k_slc, v_slc, k_win, v_win, gates)
        else:
            k_cmp = self.phi_k(cmp_blocks(k_raw, self.config))
            v_cmp = self.phi_v(cmp_blocks(v_raw, self.config))
            aux = nsa_attention(
                q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates, self.config, backend=self.backend,
                return_aux=True,
            )
            if cache is not None:
                cache.fill(k_raw, v_raw, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, self.config)
        y = self.o_proj(aux.o.reshape(B, T, self.num_heads * self.v_head_dim))
        return (y, aux) if return_aux else y

    def _decode(self, cache: NSACache, q: Tensor, k_raw: Tensor, v_raw: Tensor, k_slc: Tensor,
                v_slc: Tensor, k_win: Tensor, v_win: Tensor, gates: Tensor) -> NSAOutput:
        with torch.no_grad():
            state = cache.append(
                k_raw, v_raw, k_slc, v_slc, k_win, v_win, self.config, self.phi_k, self.phi_v
            )
            problem = problem_for("decode", q, self.num_kv_heads, self.v_head_dim, self.config,
                                  tokens=state.length)
            backend = backend_for(problem, self.backend)
            result = backend.decode(state, q, gates, self.config)
        cache.reads = result.reads
        return result.out
