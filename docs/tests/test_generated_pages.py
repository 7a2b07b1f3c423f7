"""The pages the hooks generate show what the code and bench/results/ hold, nothing else."""

from __future__ import annotations

import html
import importlib.util
import re
import sys
from pathlib import Path

import pytest
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


def _load_hook(name: str):
    path = ROOT / "docs" / "hooks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"hook_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the hook loads
    spec.loader.exec_module(module)
    return module


def test_benchmark_section_renders_tables_and_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = _load_hook("benchmarks")
    gpu = tmp_path / "h100"
    gpu.mkdir()
    rows = ["workload,backend,ms"] + [f"prefill-{i},torch,{i}.5" for i in range(hook.MAX_ROWS + 5)]
    (gpu / "prefill-2026-11-27.csv").write_text("\n".join(rows) + "\n")
    (gpu / "prefill.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (gpu / "notes.json").write_text("{}")
    monkeypatch.setattr(hook, "RESULTS", tmp_path)
    section = hook.section()
    assert "## `h100`" in section
    assert "![prefill](results/h100/prefill.png)" in section
    assert "| workload | backend | ms |" in section and "| prefill-0 | torch | 0.5 |" in section
    assert f"First {hook.MAX_ROWS} of {hook.MAX_ROWS + 5} rows" in section
    assert "[Download `prefill-2026-11-27.csv`](results/h100/prefill-2026-11-27.csv)" in section
    assert "notes.json" not in section


def test_benchmark_section_without_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = _load_hook("benchmarks")
    monkeypatch.setattr(hook, "RESULTS", tmp_path / "absent")
    assert "No benchmark results yet" in hook.section()


def test_api_pages_for_a_package_missing_from_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = _load_hook("api_pages")
    absent = {"nsa_cuda": ("nsa-cuda", ("packages/absent/src",))}
    monkeypatch.setattr(hook, "PACKAGES", {**hook.PACKAGES, **absent})
    packages = {p.name: p for p in hook._packages()}
    assert packages["nsa_cuda"].modules == [] and packages["nsa_spec"].modules
    assert "Not in this checkout" in hook._missing_page(packages["nsa_cuda"])
    assert "[not in this checkout](nsa_cuda.md)" in hook._index_page(list(packages.values()))


def test_every_api_page_exists(site_dir: Path) -> None:
    hook = _load_hook("api_pages")
    for package in hook._packages():
        for module in package.modules:
            assert (site_dir / "api" / module.path / "index.html").is_file(), module.path


def test_readme_backend_table_is_the_generated_one() -> None:
    from nsa_spec.info import capability_matrix

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- backends:begin -->\n(.*?)<!-- backends:end -->", readme, re.S)
    assert block is not None, "README.md lost its backends:begin/end markers"
    assert block.group(1) == capability_matrix(), (
        "README's backend table is stale: replace it with `python -m nsa_spec.info --markdown`"
    )
