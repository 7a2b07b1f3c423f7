"""The float64 reference registered as backend "numpy": the oracle through the same contract."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from nsa_spec.backends.capabilities import Capabilities, Problem
from nsa_spec.config import NSAConfig
from nsa_spec.contract import DecodeCache, DecodeResult, NSAGrads, NSAInputs, NSAOutput
from nsa_spec.reference.decode import decode_attention
from nsa_spec.reference.nsa import nsa_attention


class NumpyBackend:
    """Exact float64 NumPy reference; slow, CPU only, every configuration."""

    name = "numpy"
    priority = 0
    capabilities = Capabilities(
        array_api="numpy",
        devices=frozenset({"cpu"}),
        dtypes=frozenset({"float64"}),
        notes={"all": "the float64 oracle; backward needs nsa-spec[grad] (jax)"},
    )

    def unavailable_reason(self) -> str | None:
        return None

    def not_supported_reasons(self, problem: Problem) -> list[str]:
        reasons = self.capabilities.reasons(problem)
        if problem.op == "backward" and importlib.util.find_spec("jax") is None:
            reasons.append("backward needs jax: pip install 'nsa-spec[grad]'")
        return reasons

    def forward(self, inputs: NSAInputs, config: NSAConfig) -> NSAOutput:
        return nsa_attention(inputs, config)

    def backward(self, inputs: NSAInputs, config: NSAConfig, out: NSAOutput, grad_o: Any) -> NSAGrads:
        from nsa_spec.grad import nsa_attention_grads

        return nsa_attention_grads(inputs, config, grad_o, out.indices)

    def decode(self, cache: DecodeCache, q: Any, gates: Any, config: NSAConfig) -> DecodeResult:
        return decode_attention(cache, q, gates, config)

    def asarray(self, x: np.ndarray, dtype: str, device: str) -> np.ndarray:
        return np.asarray(x, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)
