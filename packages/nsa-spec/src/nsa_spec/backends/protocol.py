"""The Backend protocol: what a package registers under the `nsa.backends` entry-point group."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from nsa_spec.backends.capabilities import Capabilities, Problem
from nsa_spec.config import NSAConfig
from nsa_spec.contract import DecodeCache, DecodeResult, NSAGrads, NSAInputs, NSAOutput


@runtime_checkable
class Backend(Protocol):
    """An implementation of the kernel contract (DESIGN.md, Contracts).

    `priority`: dispatch tries higher first. `unavailable_reason()` is None when the backend can
    run on this machine (e.g. its device and compiler exist), else a sentence saying why not.
    `forward` returns `NSAOutput` with lse and indices filled. `backward` returns the gradients
    of sum(o * grad_o) with the selected blocks of `out` held fixed. `decode` attends from each
    sequence's newest token of a `DecodeCache` over that sequence's own `lengths[b]` tokens
    (never reading a row past them) and reports the tokens it read per (batch, kv head).
    `asarray`/`to_numpy` move arrays in and out, so one conformance suite serves every backend.
    """

    name: str
    priority: int
    capabilities: Capabilities

    def unavailable_reason(self) -> str | None: ...

    def not_supported_reasons(self, problem: Problem) -> list[str]: ...

    def forward(self, inputs: NSAInputs, config: NSAConfig) -> NSAOutput: ...

    def backward(self, inputs: NSAInputs, config: NSAConfig, out: NSAOutput, grad_o: Any) -> NSAGrads: ...

    def decode(self, cache: DecodeCache, q: Any, gates: Any, config: NSAConfig) -> DecodeResult: ...

    def asarray(self, x: np.ndarray, dtype: str, device: str) -> Any: ...

    def to_numpy(self, x: Any) -> np.ndarray: ...
