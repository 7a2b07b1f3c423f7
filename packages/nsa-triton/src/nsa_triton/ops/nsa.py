"""The composition, as `nsa_torch.ops.nsa`: compressed branch, importance scores, top-n, selected
branch, and the window branch fused with the gated combine.

Branch outputs of the compressed and selected branches are float32 [B, T, HQ, dv] buffers; the
window kernel reads them and writes o in q's dtype. Packed sequences (cu_seqlens) run one by one.
"""

from __future__ import annotations

import torch
from nsa_spec.blocks import n_slc_blocks
from nsa_spec.config import NSAConfig
from nsa_spec.contract import NSAInputs, NSAOutput, validate_inputs
from nsa_torch.ops.nsa import check_tensors, host_cu_seqlens, packed_sequences
from torch import Tensor

from nsa_triton.ops.compress import compressed_attention, importance_scores
from nsa_triton.ops.select import select_blocks, selected_attention
from nsa_triton.ops.window import window_combine


def _rows_contiguous(x: Tensor) -> Tensor:
    """x with unit stride in its last dim (the kernels index features as offsets)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _sequence(a: dict[str, Tensor], config: NSAConfig) -> tuple[Tensor, Tensor, Tensor]:
    """One batch of equal-length sequences -> o [B, T, HQ, dv], lse [B, T, HQ, 3], indices."""
    a = {name: _rows_contiguous(x) for name, x in a.items()}
    q = a["q"]
    B, T, HQ, dk = q.shape
    dv = a["v_slc"].shape[3]
    scale = config.softmax_scale(dk)
    lse = torch.empty((B, T, HQ, 3), dtype=torch.float32, device=q.device)
    o_cmp = torch.empty((B, T, HQ, dv), dtype=torch.float32, device=q.device)
    o_slc = torch.empty_like(o_cmp)
    compressed_attention(q, a["k_cmp"], a["v_cmp"], o_cmp, lse[..., 0], config, scale)
    scores = importance_scores(q, a["k_cmp"], lse[..., 0], n_slc_blocks(T, config), config, scale)
    indices = select_blocks(scores, config)
    del scores
    selected_attention(q, a["k_slc"], a["v_slc"], indices, o_slc, lse[..., 1], config, scale)
    o = torch.empty((B, T, HQ, dv), dtype=q.dtype, device=q.device)
    window_combine(q, a["k_win"], a["v_win"], a["gates"], o_cmp, o_slc, o, lse[..., 2], config, scale)
    return o, lse, indices.long()


def nsa_attention(inputs: NSAInputs, config: NSAConfig) -> NSAOutput:
    """NSA forward on the kernel contract -> `NSAOutput` (o in q's dtype, lse float32, indices
    long). Inputs are checked as `nsa_torch.ops.nsa.nsa_attention` checks them."""
    cu = host_cu_seqlens(inputs.cu_seqlens)
    inputs = inputs.replace(cu_seqlens=cu)
    validate_inputs(inputs, config)
    arrays = inputs.arrays()
    check_tensors(arrays)
    if cu is None:
        o, lse, idx = _sequence(arrays, config)
        return NSAOutput(o=o, lse=lse, indices=idx)
    outs = [_sequence(piece, config) for _, _, piece in packed_sequences(arrays, cu, config)]
    o, lse, idx = (torch.cat(parts, 1) for parts in zip(*outs, strict=True))
    return NSAOutput(o=o, lse=lse, indices=idx)
