"""`python -m nsa_spec.info`: every backend, whether it can run here (or why not), what it supports.

`python -m nsa_spec.info --markdown` prints the same capabilities as the Markdown matrix that the
README and the docs site show (`capability_matrix`).

A backend that loads but declares only devices this machine lacks (e.g. CUDA without a GPU) is
reported as installed but unable to run here. Devices are detected without importing torch
unless torch is installed.
"""

from __future__ import annotations

import importlib.util
import sys

from nsa_spec.backends.capabilities import int_ranges
from nsa_spec.backends.protocol import Backend
from nsa_spec.backends.registry import backends, load_failures

FIELDS = ("array_api", "devices", "dtypes", "ops", "head_dims", "group_sizes", "block_sizes", "varlen",
          "deterministic", "min_compute_capability", "saves", "backward_needs")
DEVICE_NAMES = {"cuda": "CUDA"}


def local_devices() -> frozenset[str]:
    """The device types this machine has: "cpu", plus "cuda" when torch sees a CUDA device."""
    devices = {"cpu"}
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            devices.add("cuda")
    return frozenset(devices)


def _fmt(value: object) -> str:
    if value is None:
        return "any"
    if isinstance(value, frozenset):
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return int_ranges(value)
        return ", ".join(str(v) for v in sorted(value))
    return str(value)


def status(backend: Backend, devices: frozenset[str]) -> str:
    """"available", "available on ... (no ... device on this machine)", "installed, but no ...
    device on this machine", or "unavailable: <reason>"."""
    why = backend.unavailable_reason()
    if why is not None:
        return f"unavailable: {why}"
    declared = backend.capabilities.devices
    missing = sorted(declared - devices)
    if not missing:
        return "available"
    lacks = " or ".join(DEVICE_NAMES.get(d, d) for d in missing)
    present = sorted(declared & devices)
    if not present:
        return f"installed, but no {lacks} device on this machine"
    return f"available on {', '.join(present)} (no {lacks} device on this machine)"


def render(devices: frozenset[str] | None = None) -> str:
    """The report as text, for a machine with `devices` (default: `local_devices()`)."""
    devices = local_devices() if devices is None else devices
    lines = []
    for name, backend in backends().items():
        caps = backend.capabilities
        lines.append(f"{name} (priority {backend.priority}): {status(backend, devices)}")
        for field in FIELDS:
            lines.append(f"    {field:<22} {_fmt(getattr(caps, field))}")
        for rule in caps.preferences:
            lines.append(f"    {'preference':<22} {rule.describe()}")
        for topic, note in caps.notes.items():
            lines.append(f"    note[{topic}]: {note}")
    for name, error in load_failures().items():
        lines.append(f"{name}: failed to load: {error}")
    return "\n".join(lines)


MATRIX_ROWS = {  # Capabilities field -> row label
    "array_api": "array type",
    "devices": "devices",
    "dtypes": "dtypes",
    "ops": "ops",
    "head_dims": "head dims (dk, dv)",
    "group_sizes": "group sizes G",
    "block_sizes": "block sizes (l, d, l')",
    "varlen": "varlen (`cu_seqlens`)",
    "deterministic": "deterministic",
    "min_compute_capability": "GPU architectures (min compute capability)",
    "saves": "forward saves",
    "backward_needs": "backward needs",
}


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _fmt(value).replace("|", "\\|")


def capability_matrix() -> str:
    """Every installed backend's capabilities as Markdown: one column per backend, one row per
    capability, then each backend's dispatch preferences and notes."""
    found = backends()
    if not found:
        raise RuntimeError("no nsa backend is installed; the capability matrix would be empty")
    names = list(found)
    lines = [
        "| | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---|" + "---|" * len(names),
        "| default priority | " + " | ".join(str(found[n].priority) for n in names) + " |",
    ]
    for name, label in MATRIX_ROWS.items():
        cells = [_cell(getattr(found[n].capabilities, name)) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for n in names:
        lines += [f"- `{n}`, preference: {rule.describe()}" for rule in found[n].capabilities.preferences]
        lines += [f"- `{n}`, {topic}: {note}" for topic, note in found[n].capabilities.notes.items()]
    failures = load_failures()
    if failures:
        lines.append("")
        lines += [f"- `{n}` failed to load: {err}" for n, err in failures.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Print the report (or, with --markdown, the capability matrix)."""
    print(capability_matrix() if "--markdown" in sys.argv[1:] else render())


if __name__ == "__main__":
    main()
