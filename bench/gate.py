"""The conformance gate: an NSA backend is timed only if its quick conformance subset passes
on this device (conformance/README.md):

    pytest --pyargs nsa_conformance.suite --nsa-backend NAME --nsa-device DEVICE -m quick
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class GateResult:
    """Whether the quick subset passed, how long it took, and the tail of its output."""

    backend: str
    device: str
    passed: bool
    seconds: float
    tail: str

    def reason(self) -> str:
        """Why a refused backend was not timed."""
        last = self.tail.strip().splitlines()[-1] if self.tail.strip() else "no output"
        return f"conformance gate failed on {self.device} ({last})"


def command(backend: str, device: str) -> list[str]:
    """The pytest command line of the gate."""
    return [
        sys.executable, "-m", "pytest", "--pyargs", "nsa_conformance.suite",
        "--nsa-backend", backend, "--nsa-device", device, "-m", "quick", "-q",
        "-p", "no:cacheprovider",
    ]


def run_gate(backend: str, device: str, timeout_s: float = 900) -> GateResult:
    """Run the quick subset in a subprocess and report."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(command(backend, device), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return GateResult(backend, device, False, timeout_s, out[-2000:] + f"\ntimed out after {timeout_s} s")
    tail = (proc.stdout + proc.stderr)[-2000:]
    return GateResult(backend, device, proc.returncode == 0, time.perf_counter() - start, tail)
