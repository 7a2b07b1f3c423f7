"""Backend "cuda": the selected branch on this package's CUDA kernel, the other forward stages
from backend "triton" (a declared composition: `nsa_cuda.ops.nsa.COMPOSED_STAGES`).

Claims the forward only, on CUDA devices of compute capability 8.0 and later, in bfloat16 and
float16 (tensor cores) and float32 (a simple CUDA-core path, for tests). Loading never fails for
lack of a GPU or a toolchain: `unavailable_reason` says which is missing, and
`python -m nsa_spec.info` shows it. The kernels and the triton stages are imported on first use.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch
from nsa_spec.backends.capabilities import Capabilities, Problem
from nsa_spec.config import NSAConfig
from nsa_spec.contract import DecodeCache, DecodeResult, NSAGrads, NSAInputs, NSAOutput
from nsa_spec.errors import UnsupportedError
from nsa_torch.backend import TorchBackend
from nsa_torch.tensors import capability_reasons

from nsa_cuda import build
from nsa_cuda.ops.select import DTYPES, MAX_BATCH_HEADS, MAX_GROUP, MAX_HEAD_DIM

MIN_COMPUTE_CAPABILITY = (8, 0)  # bf16 mma.sync and cp.async
NOT_IMPLEMENTED = {
    "backward": "the cuda backward is not implemented yet; backend 'triton' runs the backward of this "
    "forward (it takes the saved lse, indices and branch_o)",
    "decode": "the cuda decode step is not implemented yet (backend 'torch' has one)",
}
NOTES = {
    "composition": "forward = triton's compress, importance_top_n and window+combine around "
    "cuda's selected-branch kernel; the triton stages' refusals are listed as 'triton stage: ...'",
    "sm80": "selected kernel: mma.sync m16n8k16 (bf16/fp16 operands, float32 online softmax), one CTA "
    "per (token, kv head) with the G heads as its 16 mma rows, 16-key tiles per warp through a "
    "cp.async double buffer, 4 warps (fewer where shared memory is short), head dims padded to "
    "64/128/256; sm_80/sm_86/sm_89 compile this path, only sm_90 (H200) runs it in scripts/device-cuda.sh",
    "sm90": "runs the sm_80 mma.sync path; a wgmma/TMA path for sm_90a is not written yet",
    "build": "compiled on first use by torch.utils.cpp_extension for the current GPU into "
    "~/.cache/nsa-cuda ($NSA_CUDA_CACHE); needs nvcc (CUDA_HOME)",
    "float32": "a CUDA-core path (one warp per query head, float32 FMAs, one key at a time) for tests "
    "and references, not for speed",
    "dispatch": "default priority 4, below triton until measured faster; force it with "
    "NSA_BACKEND_FORWARD=cuda",
    **NOT_IMPLEMENTED,
}


class CudaBackend:
    """CUDA C++ selected-branch kernel inside triton's forward composition."""

    name = "cuda"
    priority = 4

    def __init__(self) -> None:
        self.capabilities = Capabilities(
            array_api="torch",
            devices=frozenset({"cuda"}),
            dtypes=frozenset(DTYPES.values()),
            ops=frozenset({"forward"}),
            head_dims=frozenset(range(1, MAX_HEAD_DIM + 1)),
            group_sizes=frozenset(range(1, MAX_GROUP + 1)),
            varlen=True,
            deterministic=True,
            min_compute_capability=MIN_COMPUTE_CAPABILITY,
            saves=frozenset({"lse", "indices", "branch_o"}),  # what triton's backward needs
            notes=dict(NOTES),
        )

    def unavailable_reason(self) -> str | None:
        """None when torch has CUDA, a device is visible, nvcc is found and the triton stages
        import; else the first of those that fails."""
        return build.unavailable_reason()

    def not_supported_reasons(self, problem: Problem) -> list[str]:
        """The capability rules `problem` breaks (with why backward/decode are not claimed), the
        grid limit, and the reasons of the composed triton stages."""
        reasons = capability_reasons(self.capabilities, problem)
        if problem.op in NOT_IMPLEMENTED:
            reasons.append(f"op={problem.op!r}: {NOT_IMPLEMENTED[problem.op]}")
            return reasons
        if problem.batch * problem.heads_kv > MAX_BATCH_HEADS:
            reasons.append(f"B*H={problem.batch * problem.heads_kv}: the selected kernel's grid holds at "
                           f"most {MAX_BATCH_HEADS}")
        reasons += [f"triton stage: {r}" for r in _triton_stage_reasons(problem) if r not in reasons]
        return reasons

    def forward(self, inputs: NSAInputs, config: NSAConfig) -> NSAOutput:
        """o, lse, indices and branch_o (the triton backward's inputs)."""
        from nsa_cuda.ops.nsa import nsa_attention

        with torch.no_grad():
            return nsa_attention(inputs, config)

    def backward(self, inputs: NSAInputs, config: NSAConfig, out: NSAOutput, grad_o: Any) -> NSAGrads:
        """Not implemented: raises `UnsupportedError`."""
        raise UnsupportedError(
            f"backend 'cuda': op='backward' is not supported: {NOT_IMPLEMENTED['backward']}"
        )

    def decode(self, cache: DecodeCache, q: Any, gates: Any, config: NSAConfig) -> DecodeResult:
        """Not implemented: raises `UnsupportedError`."""
        raise UnsupportedError(f"backend 'cuda': op='decode' is not supported: {NOT_IMPLEMENTED['decode']}")

    asarray = TorchBackend.asarray
    to_numpy = TorchBackend.to_numpy


@functools.cache
def _triton_backend() -> Any:
    """The triton backend whose stages this one composes, or None when triton cannot be imported
    (which `unavailable_reason` reports)."""
    try:
        from nsa_triton.backend import TritonBackend
    except ImportError:
        return None
    return TritonBackend()


def _triton_stage_reasons(problem: Problem) -> list[str]:
    """What the triton backend refuses of the same forward (its stages run inside this one)."""
    triton = _triton_backend()
    return [] if triton is None else triton.not_supported_reasons(dataclasses.replace(problem, op="forward"))
