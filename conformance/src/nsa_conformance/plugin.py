"""The pytest plugin (entry point `pytest11`): options, markers, fixtures, xfail file, profiles.

It is inert for every test outside `nsa_conformance.suite`: it only adds options and fixtures
there, and parametrizes the suite's `dtype` argument with the dtypes under test.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import pytest

SUITE = "nsa_conformance.suite"
DEVICES = ("cpu", "cuda")
NO_BACKEND = "no backend under test: pass --nsa-backend NAME (python -m nsa_spec.info lists them)"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nsa-conformance", "NSA conformance suite")
    group.addoption("--nsa-backend", default=None, metavar="NAME",
                    help="backend under test (required to run the suite)")
    group.addoption("--nsa-device", default="cpu", choices=DEVICES, help="device, default cpu")
    group.addoption("--nsa-dtype", action="append", default=None, metavar="NAME",
                    help="dtype under test, repeatable; default: every dtype the backend declares")
    group.addoption("--nsa-xfail", default=None, metavar="FILE",
                    help="the backend's known gaps: 'test-id-pattern  reason' per line (strict xfail)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "quick: small subset (< 60 s on a GPU), the benchmark gate")
    name = config.getoption("--nsa-backend")
    if name is None:
        return
    from nsa_spec.backends import backends, load_failures

    known = backends()
    if name not in known:
        failed = load_failures().get(name)
        detail = f"failed to load: {failed}" if failed else f"unknown; known: {sorted(known)}"
        raise pytest.UsageError(f"--nsa-backend {name!r}: {detail}")
    why = known[name].unavailable_reason()
    if why is not None:
        raise pytest.UsageError(f"--nsa-backend {name!r} is unavailable on this machine: {why}")
    for dtype in config.getoption("--nsa-dtype") or ():
        from nsa_conformance.lowprec import DTYPES

        if dtype not in DTYPES:
            raise pytest.UsageError(f"--nsa-dtype {dtype!r}: must be one of {DTYPES}")


# Hypothesis profiles by HYPOTHESIS_PROFILE. Applied to the suite's own tests only (see
# `hypothesis_settings`), never loaded globally: other packages' tests keep their own profiles.
PROFILES = {"ci": 6, "thorough": 200}


def hypothesis_settings():
    """Settings for the suite's Hypothesis tests: fixed seeds, examples from the profile."""
    from hypothesis import HealthCheck, settings

    examples = PROFILES.get(os.environ.get("HYPOTHESIS_PROFILE", "ci"), PROFILES["ci"])
    return settings(max_examples=examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _dtypes(config: pytest.Config) -> list[str]:
    name = config.getoption("--nsa-backend")
    if name is None:
        return ["unset"]
    chosen = config.getoption("--nsa-dtype")
    if chosen:
        return list(chosen)
    from nsa_spec.backends import backends

    from nsa_conformance.lowprec import DTYPES

    declared = backends()[name].capabilities.dtypes
    return [d for d in DTYPES if d in declared]


def _in_suite(item: pytest.Item) -> bool:
    module = getattr(item, "module", None)
    return module is not None and module.__name__.startswith(SUITE)


@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.module.__name__.startswith(SUITE) and "dtype" in metafunc.fixturenames:
        metafunc.parametrize("dtype", _dtypes(metafunc.config))


def read_xfail_file(path: str) -> list[tuple[str, str]]:
    """(pattern, reason) per non-blank, non-comment line; the reason is mandatory."""
    rules = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) < 2:
            raise pytest.UsageError(f"{path}:{number}: needs 'test-id-pattern  reason': {line!r}")
        rules.append((parts[0], parts[1].strip()))
    return rules


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    suite = [item for item in items if _in_suite(item)]
    if config.getoption("--nsa-backend") is None:
        for item in suite:
            item.add_marker(pytest.mark.skip(reason=NO_BACKEND))
        return
    path = config.getoption("--nsa-xfail")
    if path is None:
        return
    for pattern, reason in read_xfail_file(path):
        for item in suite:
            if fnmatch.fnmatchcase(item.name, pattern) or fnmatch.fnmatchcase(item.nodeid, pattern):
                item.add_marker(pytest.mark.xfail(reason=reason, strict=True))


@pytest.fixture(scope="session")
def nsa_backend(request: pytest.FixtureRequest):
    """The backend under test."""
    from nsa_spec.backends import backends

    return backends()[request.config.getoption("--nsa-backend")]


@pytest.fixture(scope="session")
def nsa_device(request: pytest.FixtureRequest) -> str:
    """The device under test."""
    return request.config.getoption("--nsa-device")


@pytest.fixture
def runner(nsa_backend, nsa_device: str, dtype: str):
    """The backend bound to this test's device and dtype."""
    from nsa_conformance.harness import Runner

    return Runner(nsa_backend, nsa_device, dtype)
