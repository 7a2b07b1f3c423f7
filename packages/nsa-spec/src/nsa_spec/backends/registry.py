"""Backend discovery through the `nsa.backends` entry-point group.

Each entry point names a zero-argument callable (or class) returning a `Backend`. A backend that
fails to import or construct becomes a warning and an entry in `load_failures()`, never an error.
"""

from __future__ import annotations

import functools
import warnings
from importlib.metadata import entry_points

from nsa_spec.backends.protocol import Backend

GROUP = "nsa.backends"


@functools.cache
def _discover() -> tuple[dict[str, Backend], dict[str, str]]:
    found: dict[str, Backend] = {}
    failures: dict[str, str] = {}
    for ep in entry_points(group=GROUP):
        try:
            backend = ep.load()()
        except Exception as exc:  # a broken plugin must not break the user's import
            failures[ep.name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"nsa backend {ep.name!r} failed to load: {failures[ep.name]}", stacklevel=2)
            continue
        found[backend.name] = backend
    return found, failures


def backends() -> dict[str, Backend]:
    """Every backend that loaded, by name, highest priority first."""
    found = _discover()[0]
    return dict(sorted(found.items(), key=lambda kv: (-kv[1].priority, kv[0])))


def load_failures() -> dict[str, str]:
    """Entry points that failed to load, with the error."""
    return dict(_discover()[1])


def register(backend: Backend) -> None:
    """Add a backend at run time (tests, or a backend outside an installed package)."""
    _discover()[0][backend.name] = backend


def unregister(name: str) -> None:
    """Remove a backend added at run time."""
    _discover()[0].pop(name, None)
