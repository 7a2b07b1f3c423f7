"""Every ```python block in docs/**/*.md runs, in page order, one namespace per page.

A block is skipped only when the line before its fence (blank lines aside) is `<!-- no-run -->`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1]

NO_RUN = "<!-- no-run -->"
FENCE = re.compile(r"^```python\s*$")


@dataclass(frozen=True)
class Snippet:
    """One runnable code block of a page."""

    page: Path
    line: int  # 1-based line of the first code line
    code: str


def snippets(page: Path) -> list[Snippet]:
    """The runnable ```python blocks of one Markdown page, in order."""
    lines = page.read_text().splitlines()
    out, i, previous = [], 0, ""
    while i < len(lines):
        if FENCE.match(lines[i]):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            if previous.strip() != NO_RUN:
                out.append(Snippet(page, i + 2, "\n".join(lines[i + 1 : end]) + "\n"))
            i, previous = end + 1, ""
            continue
        if lines[i].strip():
            previous = lines[i]
        i += 1
    return out


PAGES = sorted(p for p in DOCS.rglob("*.md") if snippets(p))


def test_the_docs_have_snippets() -> None:
    assert sum(len(snippets(p)) for p in PAGES) >= 15, "the snippet collector found too few blocks"


def test_no_run_marker_skips_only_the_next_block(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```python\na = 1\n```\n<!-- no-run -->\n\n```python\nraise SystemExit\n```\n")
    assert [s.code for s in snippets(page)] == ["a = 1\n"]


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(DOCS).as_posix() for p in PAGES])
def test_page_snippets_run(page: Path) -> None:
    namespace: dict = {"__name__": f"docs_snippet_{page.stem}"}
    for snippet in snippets(page):
        # Compiled under the page's name with padding so tracebacks point at the Markdown line.
        code = compile("\n" * (snippet.line - 1) + snippet.code, str(page), "exec")
        exec(code, namespace)
