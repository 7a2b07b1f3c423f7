"""The composition, as `nsa_torch.ops.nsa`: compressed branch, importance scores, top-n, selected
branch, and the window branch fused with the gated combine.

The branch outputs go to one float32 buffer `branch_o` [B, T, HQ, 3, dv] (compressed, selected,
window); the window kernel reads the first two, writes the third and the gated o in q's dtype.
`branch_o` is kept in `NSAOutput` for the backward (the gates' gradient and each branch's
rowsum(dO * O) need it). Packed sequences (cu_seqlens) run one by one.
"""

from __future__ import annotations

import torch
from nsa_spec.blocks import n_slc_blocks
from nsa_spec.config import NSAConfig
from nsa_spec.contract import NSAInputs, NSAOutput
from nsa_torch.tensors import packed_sequences, prepare
from torch import Tensor

from nsa_triton.ops.compress import compressed_attention, importance_scores
from nsa_triton.ops.select import selected_attention, top_n
from nsa_triton.ops.window import window_attention


def _rows_contiguous(x: Tensor) -> Tensor:
    """x with unit stride in its last dim (the kernels index features as offsets)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _sequence(a: dict[str, Tensor], config: NSAConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One batch of equal-length sequences -> o [B, T, HQ, dv], lse [B, T, HQ, 3], indices,
    branch_o [B, T, HQ, 3, dv]."""
    a = {name: _rows_contiguous(x) for name, x in a.items()}
    q = a["q"]
    B, T, HQ, dk = q.shape
    dv = a["v_slc"].shape[3]
    scale = config.softmax_scale(dk)
    lse = torch.empty((B, T, HQ, 3), dtype=torch.float32, device=q.device)
    branch_o = torch.empty((B, T, HQ, 3, dv), dtype=torch.float32, device=q.device)
    compressed_attention(q, a["k_cmp"], a["v_cmp"], branch_o[..., 0, :], lse[..., 0], config, scale)
    scores = importance_scores(q, a["k_cmp"], lse[..., 0], n_slc_blocks(T, config), config, scale)
    indices = top_n(scores, config)
    del scores
    selected_attention(q, a["k_slc"], a["v_slc"], indices, branch_o[..., 1, :], lse[..., 1], config,
                       scale)
    o = torch.empty((B, T, HQ, dv), dtype=q.dtype, device=q.device)
    window_attention(q, a["k_win"], a["v_win"], a["gates"], branch_o, o, lse[..., 2], config, scale)
    return o, lse, indices.long(), branch_o


def nsa_attention(inputs: NSAInputs, config: NSAConfig) -> NSAOutput:
    """NSA forward on the kernel contract -> `NSAOutput` (o in q's dtype, lse float32, indices
    long, branch_o float32). Inputs are checked as `nsa_torch.ops.nsa.nsa_attention` checks them."""
    inputs = prepare(inputs, config)
    cu = inputs.cu_seqlens
    arrays = inputs.arrays()
    if cu is None:
        o, lse, idx, branch_o = _sequence(arrays, config)
        return NSAOutput(o=o, lse=lse, indices=idx, branch_o=branch_o)
    outs = [_sequence(piece, config) for _, _, piece in packed_sequences(arrays, cu, config)]
    o, lse, idx, branch_o = (torch.cat(parts, 1) for parts in zip(*outs, strict=True))
    return NSAOutput(o=o, lse=lse, indices=idx, branch_o=branch_o)
