"""MkDocs hook: one API page per public module of every workspace package, built at build time.

Modules are read statically with griffe (nothing is imported), so a new module gets a page
without anyone editing mkdocs.yml, and a package missing from the checkout gets a page that says
so. Page `spec/numerics.md` gets a link to the conformance tolerance module where one exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import griffe
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[2]
NAV_TITLE = "API reference"
TOLERANCE_MARKER = "<!-- tolerance-module -->"
PACKAGES = {  # import name -> (distribution name, source roots relative to the workspace)
    "nsa_spec": ("nsa-spec", ("packages/nsa-spec/src",)),
    "nsa_torch": ("nsa-torch", ("packages/nsa-torch/src",)),
    "nsa_conformance": ("nsa-conformance", ("conformance/src", "conformance")),
}


@dataclass
class Package:
    """One workspace package as the API pages see it."""

    name: str
    dist: str
    modules: list[griffe.Module] = field(default_factory=list)  # empty: not in this checkout


def page_uri(module_path: str) -> str:
    """Where the API page of a module lives, relative to docs/."""
    return f"api/{module_path}.md"


def _load(name: str, roots: tuple[str, ...]) -> list[griffe.Module]:
    for root in roots:
        if (ROOT / root / name / "__init__.py").is_file():
            package = griffe.load(name, search_paths=[str(ROOT / root)], resolve_aliases=False)
            return _public_modules(package)
    return []


def _is_public_module(name: str, member: griffe.Object | griffe.Alias) -> bool:
    """Public, a module, and not a pytest file (the conformance suite's tests are not API)."""
    hidden = name.startswith(("_", "test_")) or name == "conftest"
    return not hidden and not member.is_alias and member.is_module


def _public_modules(module: griffe.Module) -> list[griffe.Module]:
    """The module and its public submodules, depth first, each level sorted by name."""
    out = [module]
    for name, member in sorted(module.members.items()):
        if _is_public_module(name, member):
            out.extend(_public_modules(member))
    return out


def _summary(obj: griffe.Object) -> str:
    return obj.docstring.value.strip().splitlines()[0] if obj.docstring else ""


def _export_target(module: griffe.Module, name: str) -> str | None:
    """Canonical path of a name a package re-exports through `__all__`, None if defined here."""
    member = module.members.get(name)
    if member is None:
        return None
    if member.is_alias:
        return member.target_path
    if member.is_module and name in member.members:  # `from .combine import combine`
        return f"{member.path}.{name}"
    return None


def _module_page(module: griffe.Module) -> str:
    lines = [f"# `{module.path}`", ""]
    exports = [n for n in (module.exports or []) if not n.startswith("_")]
    targets = {n: _export_target(module, n) for n in exports}
    reexported = {n: t for n, t in targets.items() if t is not None}
    if reexported:
        lines += ["Public names re-exported here, documented where they are defined:", ""]
        lines += ["| name | defined in |", "|---|---|"]
        lines += [f"| [`{n}`][{t}] | `{t.rsplit('.', 1)[0]}` |" for n, t in sorted(reexported.items())]
        lines.append("")
    submodules = [m for n, m in sorted(module.members.items()) if _is_public_module(n, m)]
    if submodules:
        lines += ["Modules:", ""]
        lines += [f"- [`{m.path}`]({m.path}.md): {_summary(m)}" for m in submodules]
        lines.append("")
    lines.append(f"::: {module.path}")
    if reexported:
        local = [n for n in exports if n not in reexported]
        lines += ["    options:", f"      members: {local if local else False}"]
    return "\n".join(lines) + "\n"


def _missing_page(package: Package) -> str:
    return (
        f"# `{package.name}`\n\n"
        f'!!! warning "Not in this checkout"\n'
        f"    Package `{package.dist}` (import `{package.name}`) is not in this source tree yet, so it\n"
        f"    has no API pages. They appear here as soon as its source exists.\n"
    )


def _index_page(packages: list[Package]) -> str:
    lines = [
        "# API reference",
        "",
        "Every public module of every package, generated at build time from the source by",
        "mkdocstrings (`docs/hooks/api_pages.py`): a new module or function appears here without",
        "anyone editing the docs.",
        "",
        "| package | import | modules |",
        "|---|---|---|",
    ]
    for p in packages:
        modules = f"[{len(p.modules)}]({p.name}.md)" if p.modules else f"[not in this checkout]({p.name}.md)"
        lines.append(f"| `{p.dist}` | `{p.name}` | {modules} |")
    return "\n".join(lines) + "\n"


def _packages() -> list[Package]:
    return [Package(name, dist, _load(name, roots)) for name, (dist, roots) in PACKAGES.items()]


_PACKAGES: list[Package] = []


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Load the packages and expand the nav's API entry into one section per package."""
    _PACKAGES[:] = _packages()
    sections: list = ["api/index.md"]
    for p in _PACKAGES:
        pages = [{m.path: page_uri(m.path)} for m in p.modules] or [page_uri(p.name)]
        sections.append({p.name: pages})
    for i, item in enumerate(config.nav):
        if isinstance(item, dict) and NAV_TITLE in item:
            config.nav[i] = {NAV_TITLE: sections}
            return config
    raise ValueError(f"mkdocs.yml nav needs an entry {NAV_TITLE!r} for the generated API pages")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated API pages."""
    files.append(File.generated(config, "api/index.md", content=_index_page(_PACKAGES)))
    for p in _PACKAGES:
        if not p.modules:
            files.append(File.generated(config, page_uri(p.name), content=_missing_page(p)))
        for m in p.modules:
            files.append(File.generated(config, page_uri(m.path), content=_module_page(m)))
    return files


def _tolerance_section() -> str:
    conformance = next(p for p in _PACKAGES if p.name == "nsa_conformance")
    modules = [m for m in conformance.modules if "toleran" in m.path.rsplit(".", 1)[-1]]
    if not modules:
        return (
            '!!! note "Tolerance module not in this checkout"\n'
            "    The conformance package that holds k and the floor is not in this source tree\n"
            "    yet; this paragraph links it as soon as it is.\n"
        )
    m = modules[0]
    return (
        f"The constants and their reasons live in [`{m.path}`][{m.path}] and nowhere else;\n"
        f"its text, rendered from the source:\n\n"
        f"::: {m.path}\n    options:\n      members: false\n      skip_local_inventory: true\n"
    )


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Fill the numerics page's link to the tolerance module."""
    if page.file.src_uri == "spec/numerics.md":
        if TOLERANCE_MARKER not in markdown:
            raise ValueError(f"spec/numerics.md lost its {TOLERANCE_MARKER} marker")
        return markdown.replace(TOLERANCE_MARKER, _tolerance_section())
    return markdown
