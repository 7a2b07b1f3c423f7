"""Choosing a backend per op and per problem, with a per-backend "not supported because" report.

Forward, backward and decode are chosen separately. Among the backends that claim a problem, the
one of highest rank wins: its `Capabilities.preferences` rule matching the problem, else its
default `priority`. The user forces a backend per call (`name`) or by environment variable:
`NSA_BACKEND_FORWARD`, `NSA_BACKEND_BACKWARD`, `NSA_BACKEND_DECODE` for one op, `NSA_BACKEND`
for every op. A backward takes over from another backend's forward only when its
`backward_needs` is among what that forward `saves`. Dispatch never probes by trying and never
falls back silently: the choice is logged at DEBUG, `explain` shows every backend's rank or
reasons, and a refusal names the problem and, per backend, why.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from nsa_spec.backends.capabilities import Problem
from nsa_spec.backends.protocol import Backend
from nsa_spec.backends.registry import backends, load_failures
from nsa_spec.errors import UnsupportedError

log = logging.getLogger("nsa.dispatch")

ENV = "NSA_BACKEND"


def requested(op: str, name: str | None = None) -> str | None:
    """The backend the user asked for `op`: `name`, else `NSA_BACKEND_<OP>`, else `NSA_BACKEND`."""
    if name:
        return name
    return os.environ.get(f"{ENV}_{op.upper()}") or os.environ.get(ENV) or None


def refusal_reasons(backend: Backend, problem: Problem, saved: frozenset[str] | None = None) -> list[str]:
    """Why `backend` cannot run `problem`: its availability, then its capabilities; for a backward
    after a forward that saved `saved`, also what its backward needs and did not get."""
    why = backend.unavailable_reason()
    if why is not None:
        return [f"unavailable: {why}"]
    reasons = backend.not_supported_reasons(problem)
    if problem.op == "backward" and saved is not None:
        missing = backend.capabilities.backward_needs - saved
        if missing:
            reasons.append(
                f"its backward needs the forward's {sorted(missing)}, which the forward's backend "
                f"does not save (it saves {sorted(saved)})"
            )
    return reasons


@dataclass(frozen=True)
class Candidate:
    """One backend's standing for a problem: its rank, or the reasons it refuses."""

    name: str
    rank: int | None
    reasons: tuple[str, ...]
    chosen: bool = False

    def describe(self) -> str:
        """One line: chosen, eligible with its rank, or refused with the reasons."""
        if self.reasons:
            return f"{self.name}: refused: " + "; ".join(self.reasons)
        return f"{self.name}: {'CHOSEN' if self.chosen else 'eligible'} (rank {self.rank})"


def report(problem: Problem, saved: frozenset[str] | None = None) -> dict[str, list[str]]:
    """For every known backend (failed loads included), the reasons it refuses `problem`."""
    out = {name: refusal_reasons(b, problem, saved) for name, b in backends().items()}
    out.update({name: [f"failed to load: {err}"] for name, err in load_failures().items()})
    return out


def explain(
    problem: Problem, name: str | None = None, saved: frozenset[str] | None = None
) -> list[Candidate]:
    """Every backend for `problem`, best first, the one `select_backend` picks marked chosen
    (none when it would raise)."""
    known = backends()
    forced = requested(problem.op, name)
    candidates = []
    for backend_name, why in report(problem, saved).items():
        backend = known.get(backend_name)
        rank = None if backend is None else backend.capabilities.priority_for(problem, backend.priority)
        if forced is not None and backend_name != forced and not why:
            why = [f"not requested (backend {forced!r} was)"]
        candidates.append(Candidate(backend_name, rank, tuple(why)))
    candidates.sort(key=lambda c: (bool(c.reasons), -(c.rank or 0), c.name))
    if candidates and not candidates[0].reasons:
        candidates[0] = Candidate(candidates[0].name, candidates[0].rank, (), chosen=True)
    return candidates


def select_backend(
    problem: Problem, name: str | None = None, saved: frozenset[str] | None = None
) -> Backend:
    """The requested backend (`name` or the environment) if it supports `problem`, else the
    highest-ranked one that does; `saved` is what the forward saved, for a backward."""
    known = backends()
    forced = requested(problem.op, name)
    if forced is not None:
        if forced not in known:
            failed = load_failures().get(forced)
            detail = f"it failed to load: {failed}" if failed else f"known: {sorted(known)}"
            raise UnsupportedError(f"backend={forced!r} is not available ({detail})")
        reasons = refusal_reasons(known[forced], problem, saved)
        if reasons:
            raise UnsupportedError(
                f"backend {forced!r} cannot run this {problem.describe()}: " + "; ".join(reasons)
            )
        log.debug("nsa %s: using backend %r (requested)", problem.op, forced)
        return known[forced]
    best = explain(problem, saved=saved)
    if best and best[0].chosen:
        log.debug("nsa %s: using backend %r (rank %s)", problem.op, best[0].name, best[0].rank)
        return known[best[0].name]
    lines = [f"  {c.name}: " + "; ".join(c.reasons) for c in best]
    raise UnsupportedError(f"no backend supports this {problem.describe()}:\n" + "\n".join(lines))
