"""The backend contract: capabilities, protocol, entry-point registry and dispatch."""

from nsa_spec.backends.capabilities import OPS, SAVED_OUTPUTS, Capabilities, Preference, Problem
from nsa_spec.backends.dispatch import Candidate, explain, refusal_reasons, report, requested, select_backend
from nsa_spec.backends.protocol import Backend
from nsa_spec.backends.registry import GROUP, backends, load_failures, register, unregister

__all__ = [
    "GROUP", "OPS", "SAVED_OUTPUTS", "Backend", "Candidate", "Capabilities", "Preference", "Problem",
    "backends", "explain", "load_failures", "refusal_reasons", "register", "report", "requested",
    "select_backend", "unregister",
]
