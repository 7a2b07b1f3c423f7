"""Choosing a backend for a problem, with a per-backend "not supported because" report.

Dispatch never probes by trying; it asks each backend's capabilities and never falls back
silently: the choice is logged at DEBUG and a refusal lists, per backend, why.
"""

from __future__ import annotations

import logging

from nsa_spec.backends.capabilities import Problem
from nsa_spec.backends.protocol import Backend
from nsa_spec.backends.registry import backends, load_failures
from nsa_spec.errors import UnsupportedError

log = logging.getLogger("nsa.dispatch")


def refusal_reasons(backend: Backend, problem: Problem) -> list[str]:
    """Why `backend` cannot run `problem`: its availability, then its capabilities."""
    why = backend.unavailable_reason()
    if why is not None:
        return [f"unavailable: {why}"]
    return backend.not_supported_reasons(problem)


def report(problem: Problem) -> dict[str, list[str]]:
    """For every known backend (failed loads included), the reasons it refuses `problem`."""
    out = {name: refusal_reasons(b, problem) for name, b in backends().items()}
    out.update({name: [f"failed to load: {err}"] for name, err in load_failures().items()})
    return out


def select_backend(problem: Problem, name: str | None = None) -> Backend:
    """The named backend if it supports `problem`, else the highest-priority one that does."""
    known = backends()
    if name is not None:
        if name not in known:
            failed = load_failures().get(name)
            detail = f"it failed to load: {failed}" if failed else f"known: {sorted(known)}"
            raise UnsupportedError(f"backend={name!r} is not available ({detail})")
        reasons = refusal_reasons(known[name], problem)
        if reasons:
            raise UnsupportedError(f"backend {name!r} cannot run this {problem.op}: " + "; ".join(reasons))
        log.debug("nsa %s: using backend %r (requested)", problem.op, name)
        return known[name]
    for backend in known.values():
        if not refusal_reasons(backend, problem):
            log.debug("nsa %s: using backend %r", problem.op, backend.name)
            return backend
    lines = [f"  {n}: " + "; ".join(r) for n, r in report(problem).items()]
    raise UnsupportedError(f"no backend supports this {problem.op}:\n" + "\n".join(lines))
