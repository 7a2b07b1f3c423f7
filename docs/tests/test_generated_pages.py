"""The pages the hooks generate show what the code and bench/results/ hold, nothing else."""

from __future__ import annotations

import html
import re
from pathlib import Path

from nsa_spec.backends import backends

ROOT = Path(__file__).resolve().parents[2]


def text_of(page: Path) -> str:
    """The page's text with tags stripped and entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", page.read_text()))


def test_capability_matrix_lists_every_backend(site_dir: Path) -> None:
    page = site_dir / "backends" / "index.html"
    text = page.read_text()
    assert "<!-- capability-matrix -->" not in text
    header = re.search(r"<thead>(.*?)</thead>", text, re.S).group(1)
    assert re.findall(r"<code>([^<]+)</code>", header) == list(backends())
    words = text_of(page)
    for backend in backends().values():
        for dtype in backend.capabilities.dtypes:
            assert dtype in words


def test_benchmark_page_shows_results_or_says_there_are_none(site_dir: Path) -> None:
    page = site_dir / "benchmarks" / "index.html"
    results = ROOT / "bench" / "results"
    files = sorted(p for p in results.rglob("*") if p.suffix in (".png", ".csv")) if results.is_dir() else []
    text = page.read_text()
    assert "<!-- benchmark-results -->" not in text
    if not files:
        assert "No benchmark results yet" in text
    for path in files:
        published = site_dir / "benchmarks" / "results" / path.relative_to(results)
        assert published.read_bytes() == path.read_bytes()
        assert path.name in text


def test_numerics_page_links_the_tolerance_module(site_dir: Path) -> None:
    text = (site_dir / "spec" / "numerics" / "index.html").read_text()
    assert "<!-- tolerance-module -->" not in text
    tolerance_modules = list((ROOT / "conformance").rglob("toleranc*.py"))
    if tolerance_modules:
        assert "api/nsa_conformance." in text
    else:
        assert "Tolerance module not in this checkout" in text
