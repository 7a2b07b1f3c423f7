"""Shared fixtures of the docs tests: where the workspace and the built site are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


@pytest.fixture(scope="session")
def site_dir() -> Path:
    """The site `mkdocs build` wrote (NSA_DOCS_SITE, default site/); it must exist."""
    site = Path(os.environ.get("NSA_DOCS_SITE", ROOT / "site"))
    if not (site / "index.html").is_file():
        pytest.fail(f"no built site at {site}: run `mkdocs build --strict` first (nox -s docs does)")
    return site
