"""`nsa_attention`: the dispatching, differentiable functional API at the kernel-contract level."""

from __future__ import annotations

from typing import Any

import torch
from nsa_spec.config import NSAConfig
from nsa_spec.contract import NSAInputs, NSAOutput, validate_inputs
from torch import Tensor

from nsa_torch.backend import TorchBackend
from nsa_torch.dispatch import backend_for, problem_for
from nsa_torch.ops import nsa
from nsa_torch.ops.nsa import check_tensors, host_cu_seqlens

_ARRAYS = ("q", "k_cmp", "v_cmp", "k_slc", "v_slc", "k_win", "v_win", "gates")


class _BackendAttention(torch.autograd.Function):
    """Autograd around a backend's `forward`/`backward` (backends other than the eager one)."""

    @staticmethod
    def forward(ctx: Any, backend: Any, config: NSAConfig, cu_seqlens: Any, *arrays: Tensor) -> Any:
        out = backend.forward(NSAInputs(*arrays, cu_seqlens=cu_seqlens), config)
        ctx.backend, ctx.config, ctx.cu_seqlens = backend, config, cu_seqlens
        ctx.save_for_backward(*arrays, out.o, out.lse, out.indices)
        ctx.mark_non_differentiable(out.lse, out.indices)
        return out.o, out.lse, out.indices

    @staticmethod
    def backward(ctx: Any, grad_o: Tensor, _grad_lse: Any, _grad_indices: Any) -> Any:
        *arrays, o, lse, indices = ctx.saved_tensors
        grads = ctx.backend.backward(
            NSAInputs(*arrays, cu_seqlens=ctx.cu_seqlens), ctx.config, NSAOutput(o, lse, indices),
            grad_o.contiguous(),
        )
        return (None, None, None, *(getattr(grads, name) for name in _ARRAYS))


def nsa_attention(
    q: Tensor, k_cmp: Tensor, v_cmp: Tensor, k_slc: Tensor, v_slc: Tensor, k_win: Tensor,
    v_win: Tensor, gates: Tensor, config: NSAConfig, cu_seqlens: Any = None,
    backend: str | None = None, return_aux: bool = False,
) -> Tensor | NSAOutput:
    """NSA attention after projections, RoPE and phi (DESIGN.md, the kernel contract).

    Args:
        q: [B, T, HQ, dk] queries.
        k_cmp: [B, N_cmp(T), H, dk] compressed keys.
        v_cmp: [B, N_cmp(T), H, dv] compressed values.
        k_slc: [B, T, H, dk] keys of the selected branch.
        v_slc: [B, T, H, dv] values of the selected branch.
        k_win: [B, T, H, dk] keys of the sliding branch.
        v_win: [B, T, H, dv] values of the sliding branch.
        gates: [B, T, HQ, 3] activated gate values (branch order cmp, slc, win).
        config: block sizes (`nsa_spec.NSAConfig`).
        cu_seqlens: int [n_seq + 1] offsets of packed sequences (B must be 1).
        backend: a backend name, or None for the highest-priority one that supports the call
            (and its backward when any input requires grad). Never falls back silently.
        return_aux: also return the per-branch log-sum-exp and the selected blocks.

    Returns:
        o [B, T, HQ, dv], or with `return_aux` the whole `NSAOutput` (o, lse [B, T, HQ, 3],
        indices [B, T, H, n]). Differentiable with respect to every tensor argument.
    """
    inputs = NSAInputs(q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates, cu_seqlens)
    host_cu = host_cu_seqlens(cu_seqlens)
    validate_inputs(inputs.replace(cu_seqlens=host_cu), config)
    check_tensors(inputs.arrays())
    arrays = [getattr(inputs, name) for name in _ARRAYS]
    needs_backward = torch.is_grad_enabled() and any(x.requires_grad for x in arrays)
    problem = problem_for("forward", q, k_slc.shape[2], v_slc.shape[3], config, cu_seqlens is not None)
    chosen = backend_for(problem, backend, needs_backward)
    if isinstance(chosen, TorchBackend):
        out = nsa.nsa_attention(inputs, config)
    elif needs_backward:
        out = NSAOutput(*_BackendAttention.apply(chosen, config, cu_seqlens, *arrays))
    else:
        out = chosen.forward(inputs, config)
    return out if return_aux else out.o
