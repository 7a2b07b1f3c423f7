"""The committed diagrams are exactly what docs/figures/make_figures.py draws from nsa_spec."""

from __future__ import annotations

import importlib.util
import xml.dom.minidom
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "figures" / "make_figures.py"
spec = importlib.util.spec_from_file_location("make_figures", SCRIPT)
make_figures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_figures)


@pytest.mark.parametrize("name", sorted(make_figures.FIGURES))
def test_committed_figure_is_current(name: str) -> None:
    drawn = make_figures.FIGURES[name]()
    committed = (make_figures.OUT / name).read_text()
    assert committed == drawn, f"run `python docs/figures/make_figures.py` and commit {name}"


@pytest.mark.parametrize("name", sorted(make_figures.FIGURES))
def test_figure_is_well_formed_svg(name: str) -> None:
    root = xml.dom.minidom.parseString(make_figures.FIGURES[name]()).documentElement
    assert root.tagName == "svg" and root.getElementsByTagName("title")
