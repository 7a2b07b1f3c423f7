"""MkDocs hook: the backend capability matrix, generated from each installed backend's `Capabilities`.

It replaces the marker in `backends/index.md` with `nsa_spec.info.capability_matrix()` at build
time (the README holds the same table), so the page cannot drift from what backends declare.
"""

from __future__ import annotations

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page
from nsa_spec.info import capability_matrix

PAGE = "backends/index.md"
MARKER = "<!-- capability-matrix -->"


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Put the matrix where the backends page asks for it."""
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"{PAGE} lost its {MARKER} marker")
    return markdown.replace(MARKER, capability_matrix())
