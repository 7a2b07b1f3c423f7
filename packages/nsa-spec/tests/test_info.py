"""`python -m nsa_spec.info`: compact ranges, and "installed, but no CUDA device" where a backend
runs only on devices this machine lacks."""

from __future__ import annotations

import subprocess
import sys

import pytest
from nsa_spec.backends import Capabilities, register, unregister
from nsa_spec.info import int_ranges, local_devices, render


class FakeBackend:
    """Declares capabilities and runs nothing."""

    def __init__(self, name: str, devices: set[str], why_unavailable: str | None = None, **caps):
        self.name, self.priority, self._why = name, 99, why_unavailable
        self.capabilities = Capabilities(
            array_api="torch", devices=frozenset(devices), dtypes=frozenset({"float32"}), **caps
        )

    def unavailable_reason(self) -> str | None:
        return self._why

    def not_supported_reasons(self, problem) -> list[str]:
        return self.capabilities.reasons(problem)


@pytest.fixture
def fakes():
    added = [
        FakeBackend("fake-cuda", {"cuda"}, head_dims=frozenset(range(1, 257))),
        FakeBackend("fake-both", {"cpu", "cuda"}, group_sizes=frozenset({1, 2, 3, 4, 8, 16, 32})),
        FakeBackend("fake-cpu", {"cpu"}, block_sizes=frozenset({(32, 16, 64), (16, 8, 32)})),
        FakeBackend("fake-broken", {"cuda"}, why_unavailable="triton cannot be imported"),
    ]
    for backend in added:
        register(backend)
    yield
    for backend in added:
        unregister(backend.name)


def block(text: str, name: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name} "))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")), len(lines))
    return lines[start:end]


def status(text: str, name: str) -> str:
    return block(text, name)[0].removeprefix(f"{name} (priority 99): ")


def field(lines: list[str], name: str) -> str:
    return next(line.split(maxsplit=1)[1] for line in lines if line.split()[0] == name)


def test_status_without_a_cuda_device(fakes):
    text = render(devices=frozenset({"cpu"}))
    assert status(text, "fake-cuda") == "installed, but no CUDA device on this machine"
    assert status(text, "fake-both") == "available on cpu (no CUDA device on this machine)"
    assert status(text, "fake-cpu") == "available"
    assert status(text, "fake-broken") == "unavailable: triton cannot be imported"


def test_status_with_a_cuda_device(fakes):
    text = render(devices=frozenset({"cpu", "cuda"}))
    for name in ("fake-cuda", "fake-both", "fake-cpu"):
        assert status(text, name) == "available"
    assert status(text, "fake-broken") == "unavailable: triton cannot be imported"


def test_sets_print_compactly(fakes):
    text = render(devices=frozenset({"cpu"}))
    assert field(block(text, "fake-cuda"), "head_dims") == "1..256"
    assert field(block(text, "fake-cuda"), "devices") == "cuda"
    assert field(block(text, "fake-both"), "group_sizes") == "1..4, 8, 16, 32"
    assert field(block(text, "fake-both"), "devices") == "cpu, cuda"
    assert field(block(text, "fake-cpu"), "block_sizes") == "(16, 8, 32), (32, 16, 64)"
    assert field(block(text, "fake-cpu"), "head_dims") == "any"
    prose = ("note[", "preference")  # sentences a backend writes, not tabulated values: not ranged
    assert max(len(line) for line in text.splitlines() if not line.lstrip().startswith(prose)) < 110


@pytest.mark.parametrize(
    ("values", "text"),
    [({5}, "5"), ({1, 2}, "1, 2"), ({1, 2, 3}, "1..3"), ({1, 2, 3, 5, 8, 9}, "1..3, 5, 8, 9"),
     (range(16, 129, 16), "16, 32, 48, 64, 80, 96, 112, 128"), ({-1, 0, 1, 7}, "-1..1, 7")],
)
def test_int_ranges(values, text):
    assert int_ranges(values) == text


def test_local_devices_always_has_cpu():
    assert "cpu" in local_devices()


def test_module_runs_as_a_script():
    out = subprocess.run([sys.executable, "-m", "nsa_spec.info"], capture_output=True, text=True, check=True)
    assert "numpy (priority 0): available" in out.stdout
