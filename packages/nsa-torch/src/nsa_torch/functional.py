"""`nsa_attention`: the dispatching, differentiable functional API at the kernel-contract level."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from nsa_spec.config import NSAConfig, check_config
from nsa_spec.contract import NSAInputs, NSAOutput
from torch import Tensor

from nsa_torch import library
from nsa_torch.dispatch import BackendChoice, backend_names
from nsa_torch.tensors import prepare


def nsa_attention(
    q: Tensor, k_cmp: Tensor, v_cmp: Tensor, k_slc: Tensor, v_slc: Tensor, k_win: Tensor,
    v_win: Tensor, gates: Tensor, config: NSAConfig, cu_seqlens: Any = None,
    backend: BackendChoice = None, return_aux: bool = False,
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
        backend: a backend name for every op, a mapping {"forward": name, "backward": name},
            or None: per op the best backend that claims it (`nsa_torch.explain` shows which;
            `NSA_BACKEND`, `NSA_BACKEND_FORWARD`, `NSA_BACKEND_BACKWARD` override). The backward
            is chosen only when an input requires grad. Never falls back silently.
        return_aux: also return the per-branch log-sum-exp and the selected blocks.

    Returns:
        o [B, T, HQ, dv], or with `return_aux` the whole `NSAOutput` (o, lse [B, T, HQ, 3],
        indices [B, T, H, n], and branch_o where the forward saves it). Differentiable with
        respect to every tensor argument. Runs as the custom op `torch.ops.nsa.attention`.
    """
    check_config(config)
    inputs = prepare(NSAInputs(q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates, cu_seqlens), config)
    arrays = list(inputs.arrays().values())
    needs_backward = torch.is_grad_enabled() and any(x.requires_grad for x in arrays)
    device = q.device
    forward, backward = backend_names(
        "forward", device.type, str(q.dtype).removeprefix("torch."), q.shape[2], k_slc.shape[2],
        q.shape[3], v_slc.shape[3], config, cu_seqlens is not None,
        torch.cuda.get_device_capability(device) if device.type == "cuda" else None, q.shape[0],
        q.shape[1], tuple(sorted(backend.items())) if isinstance(backend, Mapping) else backend,
        needs_backward,
    )
    cu = None if inputs.cu_seqlens is None else torch.from_numpy(inputs.cu_seqlens.astype("int64"))
    o, lse, indices, branch_o = library.attention(
        *arrays, cu, *library.config_args(config, q.shape[3]), forward, backward
    )
    if not return_aux:
        return o
    return NSAOutput(o, lse, indices, branch_o if branch_o.numel() else None)
