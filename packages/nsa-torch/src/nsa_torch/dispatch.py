"""From torch tensors to an `nsa_spec.backends.Problem`, and the backend that runs it.

Dispatch never falls back silently: a named backend that cannot run the problem raises
`UnsupportedError` with its reasons, and automatic choice raises with every backend's reasons.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from nsa_spec.backends import Backend, Problem, refusal_reasons, select_backend
from nsa_spec.config import NSAConfig
from nsa_spec.errors import UnsupportedError

log = logging.getLogger("nsa.dispatch")


def problem_for(op: str, q: torch.Tensor, heads_kv: int, dv: int, config: NSAConfig,
                varlen: bool = False) -> Problem:
    """The Problem of running `op` with queries `q` [B, T, HQ, dk]."""
    device = q.device.type
    return Problem(
        op=op, array_api="torch", device=device, dtype=str(q.dtype).removeprefix("torch."),
        heads_q=q.shape[2], heads_kv=heads_kv, dk=q.shape[3], dv=dv, config=config, varlen=varlen,
        compute_capability=torch.cuda.get_device_capability(q.device) if device == "cuda" else None,
    )


def backend_for(problem: Problem, name: str | None, needs_backward: bool) -> Backend:
    """The backend for `problem` (by `name`, or the highest priority one that supports it).

    With `needs_backward` the backend must also support the backward of the same problem.
    """
    if not needs_backward:
        return select_backend(problem, name)
    backward = dataclasses.replace(problem, op="backward")
    chosen = select_backend(backward, name)
    reasons = refusal_reasons(chosen, problem)
    if reasons:
        raise UnsupportedError(
            f"backend {chosen.name!r} runs the backward but not the forward: " + "; ".join(reasons)
        )
    log.debug("nsa forward+backward: using backend %r", chosen.name)
    return chosen
