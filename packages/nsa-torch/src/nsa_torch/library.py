"""The dispatching call as `torch.library` custom ops: `torch.ops.nsa.attention` and its backward.

`torch.compile` and CUDA graphs see one opaque op with a fake (meta) implementation, so
`NSAAttention` traces without a graph break inside attention. The backends are chosen before
the op (by name, in `nsa_torch.functional`), and the op's arguments are tensors and plain values:
the config travels as its fields, `cu_seqlens` as a host int64 tensor. Output dtypes are fixed
by the contract, so the fake needs no backend: o in q's dtype; lse and branch_o in float32
(float64 for float64 inputs); indices int64; branch_o empty when the forward saves none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from nsa_spec.backends import backends
from nsa_spec.config import NSAConfig
from nsa_spec.contract import ARRAYS, NSAInputs, NSAOutput
from nsa_spec.errors import UnsupportedError
from torch import Tensor


def _config(blocks: list[int], scale: float, gate: str) -> NSAConfig:
    l, d, l_slc, n, w = blocks
    return NSAConfig(cmp_len=l, cmp_stride=d, slc_len=l_slc, top_n=n, window=w, scale=scale, gate=gate)


def config_args(config: NSAConfig, dk: int) -> tuple[list[int], float, str]:
    """(blocks, scale, gate): `config` as the ops take it, its scale resolved for head dim dk."""
    blocks = [config.cmp_len, config.cmp_stride, config.slc_len, config.top_n, config.window]
    return blocks, config.softmax_scale(dk), config.gate


_AUTOGRAD_KEYS = ("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor", "ADInplaceOrView")


@contextlib.contextmanager
def _autograd_reentered() -> Iterator[None]:
    """Let a backend's backward use torch autograd inside the op: custom op implementations run
    with the autograd dispatch keys excluded (torch's own `_AutoDispatchBelowAutograd`), which would
    leave the eager backend's recomputation without a graph."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in _AUTOGRAD_KEYS:
        exclude = exclude.remove(getattr(torch._C.DispatchKey, key))
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude):
        yield


def _float_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _inputs(arrays: tuple[Tensor, ...], cu_seqlens: Tensor | None) -> NSAInputs:
    cu = None if cu_seqlens is None else cu_seqlens.numpy()
    return NSAInputs(*arrays, cu_seqlens=cu)


@torch.library.custom_op("nsa::attention", mutates_args=())
def attention(
    q: Tensor, k_cmp: Tensor, v_cmp: Tensor, k_slc: Tensor, v_slc: Tensor, k_win: Tensor,
    v_win: Tensor, gates: Tensor, cu_seqlens: Tensor | None, blocks: list[int], scale: float,
    gate: str, forward_backend: str, backward_backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """NSA forward on backend `forward_backend` -> (o, lse, indices, branch_o); inputs were
    checked by the caller. `backward_backend` ("" for none) is what autograd will call."""
    arrays = (q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates)
    out = backends()[forward_backend].forward(_inputs(arrays, cu_seqlens), _config(blocks, scale, gate))
    work = _float_dtype(q)
    branch_o = q.new_empty(0, dtype=work) if out.branch_o is None else out.branch_o.to(work)
    return (out.o.to(q.dtype).contiguous(), out.lse.to(work).contiguous(),
            out.indices.long().contiguous(), branch_o.contiguous())


@attention.register_fake
def _attention_fake(q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates, cu_seqlens, blocks, scale,
                    gate, forward_backend, backward_backend):
    B, T, HQ, _ = q.shape
    H, dv = k_slc.shape[2], v_slc.shape[3]
    work = _float_dtype(q)
    saves = "branch_o" in backends()[forward_backend].capabilities.saves
    branch_o = q.new_empty((B, T, HQ, 3, dv) if saves else (0,), dtype=work)
    return (q.new_empty((B, T, HQ, dv)), q.new_empty((B, T, HQ, 3), dtype=work),
            q.new_empty((B, T, H, blocks[3]), dtype=torch.long), branch_o)


@torch.library.custom_op("nsa::attention_backward", mutates_args=())
def attention_backward(
    grad_o: Tensor, q: Tensor, k_cmp: Tensor, v_cmp: Tensor, k_slc: Tensor, v_slc: Tensor,
    k_win: Tensor, v_win: Tensor, gates: Tensor, o: Tensor, lse: Tensor, indices: Tensor,
    branch_o: Tensor, cu_seqlens: Tensor | None, blocks: list[int], scale: float, gate: str,
    backward_backend: str,
) -> list[Tensor]:
    """Gradients of sum(o * grad_o) for the eight input arrays, on backend `backward_backend`,
    with the forward's selected blocks held fixed."""
    arrays = (q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates)
    saved = NSAOutput(o, lse, indices, branch_o if branch_o.numel() else None)
    with _autograd_reentered():
        grads = backends()[backward_backend].backward(
            _inputs(arrays, cu_seqlens), _config(blocks, scale, gate), saved, grad_o.contiguous()
        )
    return [_like(getattr(grads, name), x) for name, x in zip(ARRAYS, arrays, strict=True)]


def _like(grad: Tensor, x: Tensor) -> Tensor:
    """`grad` with x's dtype and strides, as the fake promises (`empty_like`)."""
    grad = grad.to(x.dtype)
    return grad if grad.stride() == x.stride() else torch.empty_like(x).copy_(grad)


@attention_backward.register_fake
def _attention_backward_fake(grad_o, q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates, *_):
    return [torch.empty_like(x) for x in (q, k_cmp, v_cmp, k_slc, v_slc, k_win, v_win, gates)]


def _setup_context(ctx, inputs, output) -> None:
    *arrays, cu_seqlens, blocks, scale, gate, _forward, backward = inputs
    o, lse, indices, branch_o = output
    ctx.save_for_backward(*arrays, o, lse, indices, branch_o)
    ctx.cu_seqlens, ctx.args = cu_seqlens, (blocks, scale, gate, backward)
    ctx.mark_non_differentiable(lse, indices, branch_o)


def _backward(ctx, grad_o, _grad_lse, _grad_indices, _grad_branch_o):
    saved = ctx.saved_tensors
    if not ctx.args[-1]:
        raise UnsupportedError(
            "nsa attention ran without a backward backend (no input required grad at the forward)"
        )
    if grad_o is None:
        grad_o = torch.zeros_like(saved[-4])
    grads = attention_backward(grad_o, *saved, ctx.cu_seqlens, *ctx.args)
    return (*grads, None, None, None, None, None, None)


attention.register_autograd(_backward, setup_context=_setup_context)
