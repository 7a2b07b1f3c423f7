"""Backend "torch": the eager ops of `nsa_torch.ops` registered under the `nsa.backends` group."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from nsa_spec.backends.capabilities import Capabilities, Problem
from nsa_spec.config import NSAConfig
from nsa_spec.contract import ARRAYS, DecodeCache, DecodeResult, NSAGrads, NSAInputs, NSAOutput
from nsa_spec.errors import InvalidInputError

from nsa_torch.ops.decode import decode_attention
from nsa_torch.ops.nsa import nsa_attention
from nsa_torch.tensors import capability_reasons

DTYPES = ("float64", "float32", "bfloat16", "float16")


class TorchBackend:
    """Vectorised eager PyTorch on CPU or CUDA, every dtype and block size; backward by autograd."""

    name = "torch"
    priority = 10
    capabilities = Capabilities(
        array_api="torch",
        devices=frozenset({"cpu", "cuda"}),
        dtypes=frozenset(DTYPES),
        deterministic=False,
        notes={
            "all": "eager ops chunked over queries: memory grows with T*n*l', not T^2; "
            "half precision computes softmax and accumulations in float32",
            "determinism": "bitwise deterministic on CPU; CUDA backward accumulates gathers with atomics",
        },
    )

    def unavailable_reason(self) -> str | None:
        """None: torch imported, so the backend runs (CUDA problems are checked per problem)."""
        return None

    def not_supported_reasons(self, problem: Problem) -> list[str]:
        """The capability rules `problem` breaks, plus a missing CUDA device."""
        return capability_reasons(self.capabilities, problem)

    def forward(self, inputs: NSAInputs, config: NSAConfig) -> NSAOutput:
        """o, lse and selected indices, without autograd."""
        with torch.no_grad():
            return nsa_attention(inputs, config)

    def backward(self, inputs: NSAInputs, config: NSAConfig, out: NSAOutput, grad_o: Any) -> NSAGrads:
        """Gradients of sum(o * grad_o), recomputed under autograd on the blocks of `out.indices`."""
        if out.indices is None:
            raise InvalidInputError("out.indices must hold the forward's selected blocks: out.indices=None")
        leaves = {n: getattr(inputs, n).detach().requires_grad_(True) for n in ARRAYS}
        with torch.enable_grad():
            o = nsa_attention(inputs.replace(**leaves), config, indices=out.indices).o
            grads = torch.autograd.grad(o, list(leaves.values()), grad_o.to(o.dtype), allow_unused=True)
        pairs = zip(leaves.items(), grads, strict=True)
        return NSAGrads(**{n: torch.zeros_like(x) if g is None else g for (n, x), g in pairs})

    def decode(self, cache: DecodeCache, q: Any, gates: Any, config: NSAConfig) -> DecodeResult:
        """Attend from each sequence's newest cached token over its own tokens; reads counted from
        the rows gathered; no value read back to the host (a CUDA graph can capture it)."""
        with torch.no_grad():
            return decode_attention(cache, q, gates, config)

    def asarray(self, x: np.ndarray, dtype: str, device: str) -> torch.Tensor:
        """A NumPy array as a torch tensor of `dtype` on `device`."""
        return torch.as_tensor(np.asarray(x)).to(device=device, dtype=getattr(torch, dtype))

    def to_numpy(self, x: Any) -> np.ndarray:
        """A tensor as a NumPy array (bfloat16 widened to float32)."""
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.numpy()
