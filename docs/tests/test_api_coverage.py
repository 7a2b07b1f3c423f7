"""Every public function and class of nsa_spec and nsa_torch has a docstring and an API entry.

Public names of a module are its `__all__`, or else the non-underscore functions and classes it
defines. Each must have its own docstring and an anchor
`<defining module>.<qualname>` in the built API pages.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"nsa_spec": ROOT / "packages" / "nsa-spec", "nsa_torch": ROOT / "packages" / "nsa-torch"}


def public_modules(package: ModuleType) -> list[ModuleType]:
    """The package and its submodules, private and pytest modules excluded (as the API pages do)."""
    out = [package]
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        parts = info.name.split(".")
        if any(p.startswith(("_", "test_")) or p == "conftest" for p in parts):
            continue
        out.append(importlib.import_module(info.name))
    return out


def public_objects(module: ModuleType) -> dict[str, object]:
    """Functions and classes a module makes public, by name: its `__all__`, or those it defines."""
    if hasattr(module, "__all__"):
        names = [n for n in module.__all__ if not n.startswith("_")]
        candidates = {n: getattr(module, n) for n in names}
    else:
        candidates = {
            n: obj for n, obj in vars(module).items()
            if not n.startswith("_") and getattr(obj, "__module__", None) == module.__name__
        }
    return {n: obj for n, obj in candidates.items() if inspect.isfunction(obj) or inspect.isclass(obj)}


def has_own_docstring(obj: object) -> bool:
    """A docstring written for this object (not a dataclass's generated signature)."""
    doc = (obj.__doc__ or "").strip()
    if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):
        return False  # dataclasses fill a missing docstring with the signature
    return bool(doc)


def api_anchors(site: Path) -> set[str]:
    """Every element id on the generated API pages."""
    ids: set[str] = set()
    for page in (site / "api").rglob("*.html"):
        ids.update(re.findall(r'id="([^"]+)"', page.read_text()))
    return ids


def package_objects(package: str) -> dict[str, object]:
    """`module.name` -> object for every public function and class of the package."""
    source = PACKAGES[package]
    if not source.is_dir():
        pytest.skip(f"{source.relative_to(ROOT)} is not in this checkout")
    root = importlib.import_module(package)  # installed by nox -s docs; an ImportError fails
    modules = public_modules(root)
    return {f"{m.__name__}.{n}": obj for m in modules for n, obj in public_objects(m).items()}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_public_names_have_docstrings(package: str) -> None:
    objects = package_objects(package)
    assert objects, f"{package} exposes no public function or class"
    missing = sorted(name for name, obj in objects.items() if not has_own_docstring(obj))
    assert not missing, f"public names without a docstring: {missing}"


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_public_names_appear_in_api_pages(package: str, site_dir: Path) -> None:
    objects = package_objects(package)
    anchors = api_anchors(site_dir)
    absent = sorted(
        f"{name} (as {obj.__module__}.{obj.__qualname__})"
        for name, obj in objects.items()
        if f"{obj.__module__}.{obj.__qualname__}" not in anchors
    )
    assert not absent, f"public names missing from the API pages: {absent}"
