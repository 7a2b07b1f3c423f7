"""The composition, as `nsa_torch.ops.nsa`: compressed branch, importance scores with top-n
(`compress.importance_top_n`: a score matrix of at most 256 MiB at a time, or none), selected branch,
and the window branch fused with the gated combine; then the backward of it all.

The branch outputs go to one float32 buffer `branch_o` [B, T, HQ, 3, dv] (compressed, selected,
window); the window kernel reads the first two, writes the third and the gated o in q's dtype.
`branch_o` is kept in `NSAOutput` for the backward (the gates' gradient and each branch's
rowsum(dO * O) need it). Packed sequences (cu_seqlens) run one by one. The selected-branch stage
is a parameter of the forward (`SelectedStage`, default this package's kernel), so another backend
composes these stages with its own selected kernel (backend "cuda" does).

The backward reads the forward's lse, indices and branch_o (nothing is recomputed but each
branch's probabilities): `combine_backward` gives the gates' gradient and each branch's
rowsum(dO_c * O_c), then the three branch backwards run one after another, each adding its share
to one float32 dq. Selection is not differentiated: the forward's indices are used.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from nsa_spec.config import NSAConfig
from nsa_spec.contract import ARRAYS, NSAGrads, NSAInputs, NSAOutput
from nsa_spec.errors import InvalidInputError
from nsa_torch.tensors import packed_sequences, prepare
from torch import Tensor

from nsa_triton.ops.combine import combine_backward
from nsa_triton.ops.compress import compressed_attention, compressed_attention_backward, importance_top_n
from nsa_triton.ops.select import selected_attention, selected_attention_backward
from nsa_triton.ops.selected_blockwise import selected_attention_blockwise, selected_dq_blockwise, supports
from nsa_triton.ops.window import window_attention, window_attention_backward

SelectedStage = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, NSAConfig, float], None]
"""The selected branch as `select.selected_attention` takes it: (q, k_slc, v_slc, indices int32,
o float32 view, lse float32 view, config, scale), writing o and lse."""


BLOCKWISE_MAX_GROUP = 8
"""Group sizes up to this run the selected forward block by block (`selected_blockwise`), larger
ones token by token (`select.selected_attention`). H200, T = 32k, HQ = 64 (compare_selected.py):
block by block is 4.27x / 3.02x / 2.14x / 1.37x faster at G = 1 / 2 / 4 / 8 and 0.71x at G = 16."""


BLOCKWISE_DQ_MAX_GROUP = 2
"""The same for the selected branch's dq. H200, T = 32k, prefill-groups (backward = forward+backward
minus forward, token-by-token dq before, block by block after): G = 1 173.8 -> 95.2 ms, G = 2 109.0
-> 83.8, G = 4 72.7 -> 72.6, G = 8 55.0 -> 66.8."""


def _blockwise(q: Tensor, k_slc: Tensor, v_slc: Tensor, config: NSAConfig, max_group: int) -> bool:
    """Whether the selected branch runs block by block: its tiles fit (`selected_blockwise.supports`)
    and G <= max_group."""
    return (supports(config, q.shape[3], v_slc.shape[3], q.element_size())
            and q.shape[2] // k_slc.shape[2] <= max_group)


def selected_forward(q: Tensor, k_slc: Tensor, v_slc: Tensor, indices: Tensor, o: Tensor, lse: Tensor,
                     config: NSAConfig, scale: float) -> None:
    """Triton's selected stage (a `SelectedStage`): block by block for G <= BLOCKWISE_MAX_GROUP, else
    token by token."""
    blockwise = _blockwise(q, k_slc, v_slc, config, BLOCKWISE_MAX_GROUP)
    stage = selected_attention_blockwise if blockwise else selected_attention
    stage(q, k_slc, v_slc, indices, o, lse, config, scale)


def _rows_contiguous(x: Tensor) -> Tensor:
    """x with unit stride in its last dim (the kernels index features as offsets)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _sequence(a: dict[str, Tensor], config: NSAConfig,
              selected: SelectedStage) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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
    indices = importance_top_n(q, a["k_cmp"], lse[..., 0], config, scale)
    selected(q, a["k_slc"], a["v_slc"], indices, branch_o[..., 1, :], lse[..., 1], config, scale)
    o = torch.empty((B, T, HQ, dv), dtype=q.dtype, device=q.device)
    window_attention(q, a["k_win"], a["v_win"], a["gates"], branch_o, o, lse[..., 2], config, scale)
    return o, lse, indices.long(), branch_o


def nsa_attention(inputs: NSAInputs, config: NSAConfig,
                  selected: SelectedStage = selected_forward) -> NSAOutput:
    """NSA forward on the kernel contract -> `NSAOutput` (o in q's dtype, lse float32, indices
    long, branch_o float32), the selected branch computed by `selected`. Inputs are checked as
    `nsa_torch.ops.nsa.nsa_attention` checks them."""
    inputs = prepare(inputs, config)
    cu = inputs.cu_seqlens
    arrays = inputs.arrays()
    if cu is None:
        o, lse, idx, branch_o = _sequence(arrays, config, selected)
        return NSAOutput(o=o, lse=lse, indices=idx, branch_o=branch_o)
    outs = [_sequence(piece, config, selected) for _, _, piece in packed_sequences(arrays, cu, config)]
    o, lse, idx, branch_o = (torch.cat(parts, 1) for parts in zip(*outs, strict=True))
    return NSAOutput(o=o, lse=lse, indices=idx, branch_o=branch_o)


def _sequence_backward(a: dict[str, Tensor], out: NSAOutput, grad_o: Tensor,
                       config: NSAConfig) -> dict[str, Tensor]:
    """Gradients of one batch of equal-length sequences, in the inputs' dtypes."""
    a = {name: _rows_contiguous(x) for name, x in a.items()}
    q, gates, lse = a["q"], a["gates"], out.lse
    scale = config.softmax_scale(q.shape[3])
    grad_o = _rows_contiguous(grad_o.to(q.dtype))
    grad_gates, delta = combine_backward(grad_o, gates, _rows_contiguous(out.branch_o))
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    dk_cmp, dv_cmp = compressed_attention_backward(
        q, a["k_cmp"], a["v_cmp"], grad_o, gates[..., 0], lse[..., 0], delta[..., 0], dq, config, scale
    )
    blockwise_dq = _blockwise(q, a["k_slc"], a["v_slc"], config, BLOCKWISE_DQ_MAX_GROUP)
    dk_slc, dv_slc = selected_attention_backward(
        q, a["k_slc"], a["v_slc"], out.indices, grad_o, gates[..., 1], lse[..., 1], delta[..., 1], dq,
        config, scale, dq_stage=selected_dq_blockwise if blockwise_dq else None,
    )
    dk_win, dv_win = window_attention_backward(
        q, a["k_win"], a["v_win"], grad_o, gates[..., 2], lse[..., 2], delta[..., 2], dq, config, scale
    )
    grads = {"q": dq, "k_cmp": dk_cmp, "v_cmp": dv_cmp, "k_slc": dk_slc, "v_slc": dv_slc,
             "k_win": dk_win, "v_win": dv_win, "gates": grad_gates}
    return {name: grads[name].to(a[name].dtype) for name in ARRAYS}


def nsa_attention_backward(inputs: NSAInputs, config: NSAConfig, out: NSAOutput,
                           grad_o: Tensor) -> NSAGrads:
    """Gradients of sum(o * grad_o) for every input array, from the forward's `out` (lse, indices
    and branch_o, as `nsa_attention` returns them)."""
    for name in ("lse", "indices", "branch_o"):
        if getattr(out, name) is None:
            raise InvalidInputError(
                f"out.{name} must hold what the triton forward saved (lse, indices, branch_o): "
                f"out.{name}=None"
            )
    inputs = prepare(inputs, config)
    cu = inputs.cu_seqlens
    arrays = inputs.arrays()
    if cu is None:
        return NSAGrads(**_sequence_backward(arrays, out, grad_o, config))
    pieces = []
    for lo, hi, piece in packed_sequences(arrays, cu, config):
        saved = NSAOutput(out.o[:, lo:hi], out.lse[:, lo:hi], out.indices[:, lo:hi],
                          out.branch_o[:, lo:hi])
        pieces.append(_sequence_backward(piece, saved, grad_o[:, lo:hi], config))
    return NSAGrads(**{name: torch.cat([g[name] for g in pieces], 1) for name in ARRAYS})
