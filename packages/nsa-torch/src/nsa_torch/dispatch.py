"""From torch tensors to `nsa_spec.backends.Problem`s, the backend of each op, and `explain`.

Forward, backward and decode are chosen separately (`nsa_spec.backends.dispatch`). `backend`
arguments take a name (every op), a mapping {op: name} (the ops it names) or None (automatic,
or the `NSA_BACKEND*` environment variables). Dispatch never falls back silently: a requested
backend that cannot run the problem raises `UnsupportedError` with its reasons, and automatic
choice raises with every backend's reasons.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from nsa_spec.backends import OPS, Backend, Candidate, Problem, backends, select_backend
from nsa_spec.backends import explain as explain_problem
from nsa_spec.config import NSAConfig
from nsa_spec.errors import InvalidInputError

BackendChoice = str | Mapping[str, str] | None


def problem_for(op: str, q: torch.Tensor, heads_kv: int, dv: int, config: NSAConfig,
                varlen: bool = False, tokens: int | None = None) -> Problem:
    """The Problem of running `op` with queries `q` [B, T, HQ, dk]; `tokens` defaults to T
    (for decode, pass the cache length)."""
    device = q.device.type
    return Problem(
        op=op, array_api="torch", device=device, dtype=str(q.dtype).removeprefix("torch."),
        heads_q=q.shape[2], heads_kv=heads_kv, dk=q.shape[3], dv=dv, config=config, varlen=varlen,
        compute_capability=torch.cuda.get_device_capability(q.device) if device == "cuda" else None,
        batch=q.shape[0], tokens=q.shape[1] if tokens is None else tokens,
    )


def requested_backend(backend: BackendChoice, op: str) -> str | None:
    """The backend name `backend` asks for `op` (None: automatic)."""
    if backend is None or isinstance(backend, str):
        return backend
    if not isinstance(backend, Mapping) or not set(backend) <= set(OPS):
        raise InvalidInputError(
            f"backend must be a name, a mapping from ops {OPS} to names, or None: backend={backend!r}"
        )
    return backend.get(op)


def backend_for(problem: Problem, backend: BackendChoice) -> Backend:
    """The backend that runs `problem` (its op alone)."""
    return select_backend(problem, requested_backend(backend, problem.op))


def forward_backward(problem: Problem, backend: BackendChoice,
                     needs_backward: bool) -> tuple[Backend, Backend | None]:
    """The forward's backend, and with `needs_backward` the backward's: the best one that claims
    the backward and accepts what that forward saves."""
    forward = backend_for(problem, backend)
    if not needs_backward:
        return forward, None
    backward = select_backend(dataclasses.replace(problem, op="backward"),
                              requested_backend(backend, "backward"), saved=forward.capabilities.saves)
    return forward, backward


@torch.compiler.assume_constant_result
def backend_names(op: str, device: str, dtype: str, heads_q: int, heads_kv: int, dk: int, dv: int,
                  config: NSAConfig, varlen: bool, compute_capability: tuple[int, int] | None,
                  batch: int, tokens: int, backend: tuple[tuple[str, str], ...] | str | None,
                  needs_backward: bool) -> tuple[str, str]:
    """(forward backend, backward backend or "") by name, from plain values: `torch.compile`
    runs it once while tracing and keeps the names, so the choice costs nothing per call."""
    problem = Problem(op=op, array_api="torch", device=device, dtype=dtype, heads_q=heads_q,
                      heads_kv=heads_kv, dk=dk, dv=dv, config=config, varlen=varlen,
                      compute_capability=compute_capability, batch=batch, tokens=tokens)
    choice = dict(backend) if isinstance(backend, tuple) else backend
    forward, backward = forward_backward(problem, choice, needs_backward)
    return forward.name, "" if backward is None else backward.name


@dataclass(frozen=True)
class Explanation:
    """Every backend's standing per op for given inputs, best first (see `explain`)."""

    problems: dict[str, Problem]
    candidates: dict[str, list[Candidate]]

    def chosen(self, op: str) -> str | None:
        """The backend `op` would run on, None if every backend refuses it."""
        return next((c.name for c in self.candidates[op] if c.chosen), None)

    def __str__(self) -> str:
        lines = []
        for op, problem in self.problems.items():
            lines.append(problem.describe() + ":")
            lines.extend("  " + c.describe() for c in self.candidates[op])
        return "\n".join(lines)


def explain(q: torch.Tensor, k_slc: torch.Tensor, v_slc: torch.Tensor, config: NSAConfig,
            cu_seqlens: object = None, backend: BackendChoice = None,
            ops: tuple[str, ...] = OPS) -> Explanation:
    """Which backend would run each of `ops` for these inputs (q [B, T, HQ, dk], k_slc/v_slc
    [B, T, H, .]), and why every other one would not. The backward is explained after the forward
    that would run (only backends that accept what it saves qualify); decode as a step at cache
    length T. `print(explain(...))` gives one line per backend."""
    problems, candidates = {}, {}
    saved = None
    for op in ops:
        problem = problem_for(op, q, k_slc.shape[2], v_slc.shape[3], config, cu_seqlens is not None)
        if op == "decode":
            problem = dataclasses.replace(problem, varlen=False)
        found = explain_problem(problem, requested_backend(backend, op),
                                saved=saved if op == "backward" else None)
        if op == "forward":
            forward = next((c.name for c in found if c.chosen), None)
            if forward is not None:
                saved = backends()[forward].capabilities.saves
        problems[op], candidates[op] = problem, found
    return Explanation(problems, candidates)
