"""MkDocs hook: the backend capability matrix, generated from each installed backend's `Capabilities`.

It replaces the marker in `backends/index.md` with a table built from
`nsa_spec.backends.backends()` at build time, so the page cannot drift from what backends declare.
"""

from __future__ import annotations

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page
from nsa_spec.backends import backends, load_failures

PAGE = "backends/index.md"
MARKER = "<!-- capability-matrix -->"
FIELDS = {  # Capabilities field -> row label
    "array_api": "array type",
    "devices": "devices",
    "dtypes": "dtypes",
    "ops": "ops",
    "head_dims": "head dims (dk, dv)",
    "group_sizes": "group sizes G",
    "block_sizes": "block sizes (l, d, l')",
    "varlen": "varlen (`cu_seqlens`)",
    "deterministic": "deterministic",
    "min_compute_capability": "min compute capability",
}


def _cell(value: object) -> str:
    if value is None:
        return "any"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, frozenset):
        return ", ".join(str(v) for v in sorted(value))
    return str(value).replace("|", "\\|")


def matrix() -> str:
    """The matrix as Markdown: one column per backend, one row per capability."""
    found = backends()
    if not found:
        raise RuntimeError("no nsa backend is installed; the capability matrix would be empty")
    names = list(found)
    lines = [
        "| | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---|" + "---|" * len(names),
        "| priority | " + " | ".join(str(found[n].priority) for n in names) + " |",
    ]
    for name, label in FIELDS.items():
        cells = [_cell(getattr(found[n].capabilities, name)) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for n in names:
        for topic, note in found[n].capabilities.notes.items():
            lines.append(f"- `{n}`, {topic}: {note}")
    failures = load_failures()
    if failures:
        lines.append("")
        lines += [f"- `{n}` failed to load where these docs were built: {err}" for n, err in failures.items()]
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Put the matrix where the backends page asks for it."""
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"{PAGE} lost its {MARKER} marker")
    return markdown.replace(MARKER, matrix())
