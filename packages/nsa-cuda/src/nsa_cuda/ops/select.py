"""The selected branch (Eq. 12) on the CUDA kernel of csrc/select.cuh, and its input checks.

`selected_attention` has the signature of `nsa_triton.ops.select.selected_attention` (the
composition's `SelectedStage`): it writes o and lse in place. Inputs are checked here with the
project's errors before the extension is called; the limits below mirror csrc/select.h and
csrc/select.cu (a test reads those files and compares).
"""

from __future__ import annotations

import torch
from nsa_spec.config import NSAConfig
from nsa_spec.errors import InvalidInputError, UnsupportedError
from torch import Tensor

from nsa_cuda.build import extension

DTYPES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
"""Tensor cores (mma.sync) for the half-precision types; float32 takes a CUDA-core path (tests)."""
MAX_GROUP = 16  # select.h kMaxGroup: the G heads of a group are one CTA's 16 mma rows
MAX_HEAD_DIM = 256  # select.h kMaxHeadDim: the largest head-dim tile
MAX_BATCH_HEADS = 65535  # select.cu kMaxGridY: B * H CTAs along the grid's y axis


def limit_reasons(heads_q: int, heads_kv: int, dk: int, dv: int, dtype: str, batch: int = 1) -> list[str]:
    """Why the kernel cannot run this shape and dtype (each line names the value and the limit)."""
    reasons = []
    if dtype not in DTYPES.values():
        reasons.append(f"dtype={dtype!r}: the kernels take {sorted(DTYPES.values())}")
    group = heads_q // heads_kv
    if not 1 <= group <= MAX_GROUP:
        reasons.append(f"group size G=HQ/H={group}: one CTA holds G <= {MAX_GROUP} query rows")
    for name, value in (("dk", dk), ("dv", dv)):
        if value > MAX_HEAD_DIM:
            reasons.append(f"{name}={value}: head dims up to {MAX_HEAD_DIM} are supported")
    if batch * heads_kv > MAX_BATCH_HEADS:
        reasons.append(f"B*H={batch * heads_kv}: at most {MAX_BATCH_HEADS} (the grid's y axis)")
    return reasons


def check_inputs(q: Tensor, k_slc: Tensor, v_slc: Tensor, indices: Tensor, o: Tensor, lse: Tensor) -> None:
    """Raise `InvalidInputError` (shapes, dtypes, strides, devices) or `UnsupportedError` (the
    kernel's limits), naming the argument, its value and the rule."""
    for name, x, dims in (("q", q, 4), ("k_slc", k_slc, 4), ("v_slc", v_slc, 4), ("indices", indices, 4),
                          ("o", o, 4), ("lse", lse, 3)):
        if not isinstance(x, Tensor) or x.dim() != dims:
            raise InvalidInputError(f"{name} must be a {dims}-dim torch.Tensor: got {getattr(x, 'shape', x)}")
        if dims == 4 and x.stride(-1) != 1:
            raise InvalidInputError(
                f"{name} must have unit stride in its last dim: {name}.stride()={x.stride()}"
            )
    if q.dtype not in DTYPES:
        raise UnsupportedError(f"q.dtype={q.dtype}: the cuda selected kernel takes {sorted(DTYPES.values())}")
    for name, x in (("k_slc", k_slc), ("v_slc", v_slc)):
        if x.dtype != q.dtype:
            raise InvalidInputError(f"{name} must have q's dtype: {name}.dtype={x.dtype}, q.dtype={q.dtype}")
    if indices.dtype != torch.int32:
        raise InvalidInputError(f"indices must be int32: indices.dtype={indices.dtype}")
    for name, x in (("o", o), ("lse", lse)):
        if x.dtype != torch.float32:
            raise InvalidInputError(f"{name} must be float32: {name}.dtype={x.dtype}")
    B, T, HQ, dk = q.shape
    H, dv = k_slc.shape[2], v_slc.shape[3]
    expected = {"k_slc": (B, T, H, dk), "v_slc": (B, T, H, dv), "indices": (B, T, H, indices.shape[3]),
                "o": (B, T, HQ, dv), "lse": (B, T, HQ)}
    for name, x in (("k_slc", k_slc), ("v_slc", v_slc), ("indices", indices), ("o", o), ("lse", lse)):
        if tuple(x.shape) != expected[name]:
            raise InvalidInputError(f"{name} must have shape {expected[name]} (from q [B, T, HQ, dk] and "
                                    f"k_slc/v_slc [B, T, H, .]): {name}.shape={tuple(x.shape)}")
    if H == 0 or HQ % H:
        raise InvalidInputError(f"HQ must be a multiple of H: HQ={HQ}, H={H}")
    if indices.shape[3] < 1:
        raise InvalidInputError(
            f"indices must hold n >= 1 slots per (token, kv head): indices.shape={tuple(indices.shape)}"
        )
    reasons = limit_reasons(HQ, H, dk, dv, DTYPES[q.dtype], B)
    if reasons:
        raise UnsupportedError("the cuda selected kernel cannot run this: " + "; ".join(reasons))
    arrays = {"q": q, "k_slc": k_slc, "v_slc": v_slc, "indices": indices, "o": o, "lse": lse}
    for name, x in arrays.items():
        if x.device != q.device or x.device.type != "cuda":
            raise InvalidInputError(
                f"{name} must be on q's CUDA device: {name} is on {x.device}, q on {q.device}"
            )


def selected_attention(q: Tensor, k_slc: Tensor, v_slc: Tensor, indices: Tensor, o: Tensor, lse: Tensor,
                       config: NSAConfig, scale: float) -> None:
    """Write the selected branch of q [B, T, HQ, dk] over the blocks `indices` [B, T, H, n] (int32,
    -1 padded) of k_slc/v_slc [B, T, H, d] into o [B, T, HQ, dv] and lse [B, T, HQ] (float32, views
    allowed)."""
    check_inputs(q, k_slc, v_slc, indices, o, lse)
    extension().selected_attention(q, k_slc, v_slc, indices, o, lse, config.slc_len, float(scale))
