"""The backend contract: capabilities, protocol, entry-point registry and dispatch."""

from nsa_spec.backends.capabilities import OPS, Capabilities, Problem
from nsa_spec.backends.dispatch import refusal_reasons, report, select_backend
from nsa_spec.backends.protocol import Backend
from nsa_spec.backends.registry import GROUP, backends, load_failures, register, unregister

__all__ = [
    "GROUP", "OPS", "Backend", "Capabilities", "Problem", "backends", "load_failures",
    "refusal_reasons", "register", "report", "select_backend", "unregister",
]
