"""The suite's own test: it must catch every broken backend and pass the numpy reference."""

from __future__ import annotations

import pytest
from broken import BROKEN, WindowTopLeft
from nsa_spec.backends import register, unregister


class Outcomes:
    """A pytest plugin that records the outcome of every test call."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed: list[str] = []
        self.skipped: list[str] = []
        self.xfailed: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if hasattr(report, "wasxfail") and report.skipped:
            self.xfailed.append(report.nodeid)
        elif report.failed:
            self.failed.append(report.nodeid)
        elif report.when == "call" and report.passed:
            self.passed.append(report.nodeid)
        elif report.skipped:
            self.skipped.append(report.nodeid)


def run_suite(*args: str) -> tuple[int, Outcomes]:
    outcomes = Outcomes()
    code = pytest.main(["--pyargs", "nsa_conformance.suite", "-q", "-p", "no:cacheprovider", *args],
                       plugins=[outcomes])
    return int(code), outcomes


@pytest.fixture
def registered(request: pytest.FixtureRequest):
    backend = request.param()
    register(backend)
    yield backend
    unregister(backend.name)


# The test that must fail for each bug (others may fail too), and how much of the suite to run.
SELECTION = {"broken-packed-dense-leak": ("-k", "poison")}
EXPECTED = {
    "broken-packed-dense-leak": "test_varlen_poison_does_not_leak",
    "broken-window-top-left": "test_forward[",
    "broken-scores-see-the-future": "test_forward[",
    "broken-drops-forced-block": "test_forward[",
    "broken-higher-index-wins-ties": "test_tie_rule[",
    "broken-late-emission": "test_prefill_equals_decode[",
    "broken-formula-reads": "test_table4_reads[",
    "broken-one-length": "test_varied_lengths_decode_together[",
    "broken-unused-rows-leak": "test_unused_rows_are_never_read[",
}


@pytest.mark.parametrize("registered", BROKEN, ids=[b.name for b in BROKEN], indirect=True)
def test_broken_backend_is_caught(registered) -> None:
    selection = SELECTION.get(registered.name, ("-m", "quick"))
    code, outcomes = run_suite("--nsa-backend", registered.name, *selection)
    assert code == pytest.ExitCode.TESTS_FAILED, f"{registered.bug}: suite exit {code}"
    assert any(EXPECTED[registered.name] in n for n in outcomes.failed), (
        f"{registered.bug}: expected {EXPECTED[registered.name]}...] to fail; failed: {outcomes.failed}"
    )


def test_numpy_reference_passes() -> None:
    code, outcomes = run_suite("--nsa-backend", "numpy", "-m", "quick")
    assert code == pytest.ExitCode.OK, f"numpy failed: {outcomes.failed}"
    assert outcomes.passed and not outcomes.failed


def test_without_backend_everything_skips_with_reason() -> None:
    code, outcomes = run_suite("-m", "quick", "-rs")
    assert code == pytest.ExitCode.OK and not outcomes.passed and outcomes.skipped


@pytest.mark.parametrize("registered", [WindowTopLeft], ids=["window-top-left"], indirect=True)
def test_xfail_file_is_strict(registered, tmp_path) -> None:
    """Known gaps listed in the xfail file become xfails; a listed test that passes fails the run."""
    gaps = tmp_path / "conformance-xfail.txt"
    gaps.write_text("# known gaps\ntest_forward[*  window branch mask is top-left aligned\n"
                    "test_tie_rule[*  listed although it passes\n")
    code, outcomes = run_suite("--nsa-backend", registered.name, "-m", "quick", "--nsa-xfail", str(gaps),
                               "-k", "test_forward or test_tie_rule")
    assert outcomes.xfailed and all("test_forward[" in n for n in outcomes.xfailed)
    assert code == pytest.ExitCode.TESTS_FAILED
    assert any("test_tie_rule[" in n for n in outcomes.failed), outcomes.failed
