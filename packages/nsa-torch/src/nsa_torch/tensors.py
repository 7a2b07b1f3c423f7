"""Plumbing shared by every backend that takes torch tensors: input checks, the host copy of
`cu_seqlens`, the split of packed sequences and the capability reasons of a torch device.

`prepare` is the one entry: backends call it at their contract boundary; the functional API calls
it once before dispatch and hands the prepared inputs on, so the host copy of `cu_seqlens` (the
only host synchronisation) happens once per call.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from nsa_spec.backends.capabilities import Capabilities, Problem
from nsa_spec.blocks import cmp_cu_seqlens
from nsa_spec.config import NSAConfig
from nsa_spec.contract import NSAInputs, validate_inputs
from nsa_spec.errors import InvalidInputError
from torch import Tensor


def check_tensors(arrays: dict[str, Any]) -> None:
    """Every array must be a floating torch tensor of one dtype on one device."""
    q = arrays["q"]
    for name, x in arrays.items():
        if not isinstance(x, Tensor):
            raise InvalidInputError(f"{name} must be a torch.Tensor: got {type(x).__name__}")
        if not x.is_floating_point():
            raise InvalidInputError(f"{name} must be a floating tensor: {name}.dtype={x.dtype}")
        if x.dtype != q.dtype or x.device != q.device:
            raise InvalidInputError(
                f"{name} must have q's dtype and device: {name} is {x.dtype} on {x.device}, "
                f"q is {q.dtype} on {q.device}"
            )


def host_cu_seqlens(cu_seqlens: Any) -> np.ndarray | None:
    """cu_seqlens as a host int64 array (one device sync per call, never per token)."""
    if cu_seqlens is None:
        return None
    if isinstance(cu_seqlens, Tensor):
        if cu_seqlens.is_floating_point():
            raise InvalidInputError(f"cu_seqlens must be an int tensor: cu_seqlens.dtype={cu_seqlens.dtype}")
        return cu_seqlens.detach().cpu().numpy()
    return np.asarray(cu_seqlens)


def packed_sequences(
    arrays: dict[str, Tensor], cu: np.ndarray, config: NSAConfig
) -> list[tuple[int, int, dict[str, Tensor]]]:
    """Split packed inputs by host `cu` into (lo, hi, that sequence's arrays), compressed tokens
    cut at `blocks.cmp_cu_seqlens`."""
    cu = cu.astype(np.int64)
    cu_cmp = cmp_cu_seqlens(cu, config)
    pieces = []
    for i in range(len(cu) - 1):
        lo, hi, clo, chi = int(cu[i]), int(cu[i + 1]), int(cu_cmp[i]), int(cu_cmp[i + 1])
        piece = {
            name: x[:, clo:chi] if name in ("k_cmp", "v_cmp") else x[:, lo:hi] for name, x in arrays.items()
        }
        pieces.append((lo, hi, piece))
    return pieces


def prepare(inputs: NSAInputs, config: NSAConfig) -> NSAInputs:
    """Check `inputs` against the contract and the tensor rules; return them with `cu_seqlens` as
    a host int64 array (a no-op copy when it already is one)."""
    inputs = inputs.replace(cu_seqlens=host_cu_seqlens(inputs.cu_seqlens))
    validate_inputs(inputs, config)
    check_tensors(inputs.arrays())
    return inputs


def capability_reasons(capabilities: Capabilities, problem: Problem) -> list[str]:
    """The capability rules `problem` breaks, plus a missing CUDA device (for torch-tensor backends)."""
    reasons = capabilities.reasons(problem)
    if problem.device == "cuda" and not torch.cuda.is_available():
        reasons.append("device='cuda' but torch.cuda.is_available() is False on this machine")
    return reasons
