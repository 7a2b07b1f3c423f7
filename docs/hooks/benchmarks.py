"""MkDocs hook: the benchmark page, generated from whatever `bench/results/` holds at build time.

Every PNG under `bench/results/` is embedded and every CSV is shown as a table (and linked for
download), grouped by the folder they sit in (one per GPU). With no results the page says so.
"""

from __future__ import annotations

import csv
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
PAGE = "benchmarks/index.md"
MARKER = "<!-- benchmark-results -->"
SITE_DIR = "benchmarks/results"  # where result files are published, relative to the site root
MAX_ROWS = 100


def result_files() -> list[Path]:
    """Plots and tables under bench/results/, sorted by path."""
    if not RESULTS.is_dir():
        return []
    return sorted(p for p in RESULTS.rglob("*") if p.is_file() and p.suffix in (".png", ".csv"))


def _table(path: Path) -> list[str]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return [f"`{path.name}` is empty."]
    header, body = rows[0], rows[1:]

    def fmt(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [fmt(header), "|" + "---|" * len(header)]
    lines += [fmt(r) for r in body[:MAX_ROWS]]
    if len(body) > MAX_ROWS:
        lines.append(f"\nFirst {MAX_ROWS} of {len(body)} rows; the CSV has them all.")
    return lines


def section() -> str:
    """The results as Markdown, or a note that there are none yet."""
    files = result_files()
    if not files:
        return (
            '!!! warning "No benchmark results yet"\n'
            "    `bench/results/` holds no CSV or PNG files in the checkout these docs were built\n"
            "    from, so there is nothing to show. Results appear here once the benchmark runner\n"
            "    has written them and they are committed.\n"
        )
    lines = []
    for folder in sorted({p.parent for p in files}):
        lines += [f"## `{folder.relative_to(RESULTS).as_posix() or 'results'}`", ""]
        for path in (p for p in files if p.parent == folder):
            rel = path.relative_to(RESULTS).as_posix()
            lines += [f"### `{path.name}`", ""]
            if path.suffix == ".png":
                lines.append(f"![{path.stem}](results/{rel})")
            else:
                lines += _table(path)
                lines += ["", f"[Download `{path.name}`](results/{rel})"]
            lines.append("")
    return "\n".join(lines)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Publish the result files next to the page."""
    for path in result_files():
        uri = f"{SITE_DIR}/{path.relative_to(RESULTS).as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Put the results where the benchmark page asks for them."""
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"{PAGE} lost its {MARKER} marker")
    return markdown.replace(MARKER, section())
