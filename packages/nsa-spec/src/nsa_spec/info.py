"""`python -m nsa_spec.info`: every backend, whether it is available (or why not), what it supports."""

from __future__ import annotations

from nsa_spec.backends.registry import backends, load_failures


def _fmt(value: object) -> str:
    if value is None:
        return "any"
    if isinstance(value, frozenset):
        return ", ".join(str(v) for v in sorted(value))
    return str(value)


def render() -> str:
    """The report as text."""
    lines = []
    for name, backend in backends().items():
        why = backend.unavailable_reason()
        status = "available" if why is None else f"unavailable: {why}"
        caps = backend.capabilities
        lines.append(f"{name} (priority {backend.priority}): {status}")
        for field in ("array_api", "devices", "dtypes", "ops", "head_dims", "group_sizes",
                      "block_sizes", "varlen", "deterministic", "min_compute_capability"):
            lines.append(f"    {field:<22} {_fmt(getattr(caps, field))}")
        for topic, note in caps.notes.items():
            lines.append(f"    note[{topic}]: {note}")
    for name, error in load_failures().items():
        lines.append(f"{name}: failed to load: {error}")
    return "\n".join(lines)


def main() -> None:
    """Print the report."""
    print(render())


if __name__ == "__main__":
    main()
