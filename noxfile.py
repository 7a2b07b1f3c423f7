"""Every session a user or CI runs. `nox --list` documents them; `nox -t ci` is what CI runs."""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True

CONSTRAINTS = ("-c", "constraints.txt")
SPEC = "-e./packages/nsa-spec[grad]"
TEST_DEPS = ("pytest>=8", "hypothesis>=6.100")

# What each conformance target installs beside nsa-spec and the suite.
BACKEND_PACKAGES = {
    "numpy": (),
    "torch": ("-e./packages/nsa-torch",),
}


@nox.session(tags=["ci"])
def lint(session: nox.Session) -> None:
    """ruff over the whole workspace."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")


def _conformance_session(backend: str) -> None:
    @nox.session(name=f"conformance-{backend}", tags=["ci"])
    def conformance(session: nox.Session) -> None:
        """The conformance suite against one backend (conformance/README.md); numpy adds its meta-test."""
        session.install(*CONSTRAINTS, SPEC, *BACKEND_PACKAGES[backend], "-e./conformance", *TEST_DEPS)
        xfail = f"packages/nsa-{backend}/conformance-xfail.txt"
        known_gaps = ("--nsa-xfail", xfail) if os.path.exists(xfail) else ()
        session.run("pytest", "--pyargs", "nsa_conformance.suite", "--nsa-backend", backend,
                    *known_gaps, *session.posargs)
        if backend == "numpy":
            session.run("pytest", "conformance/tests")


for _backend in BACKEND_PACKAGES:
    _conformance_session(_backend)


@nox.session(tags=["ci"])
def spec(session: nox.Session) -> None:
    """nsa-spec's own tests: block math, reference, counters, gradients, contract."""
    session.install(*CONSTRAINTS, SPEC, *TEST_DEPS)
    session.run("pytest", "packages/nsa-spec/tests", *session.posargs)


@nox.session(tags=["ci"])
def torch(session: nox.Session) -> None:
    """nsa-torch's own tests: ops against the reference, module, cache, dispatch, a toy training run."""
    session.install(*CONSTRAINTS, SPEC, "-e./packages/nsa-torch", "matplotlib", *TEST_DEPS)
    session.run("pytest", "packages/nsa-torch/tests", *session.posargs)


@nox.session(tags=["ci"])
def triton(session: nox.Session) -> None:
    """nsa-triton's kernel tests against the float64 oracle, under Triton's interpreter on the CPU."""
    session.install(*CONSTRAINTS, SPEC, "-e./packages/nsa-torch", "-e./packages/nsa-triton", *TEST_DEPS)
    session.run("pytest", "packages/nsa-triton/tests", *session.posargs, env={"TRITON_INTERPRET": "1"})


@nox.session
def demo(session: nox.Session) -> None:
    """Draw NSA's block selection (demo-out/selection.png) and print measured decode reads."""
    session.install(*CONSTRAINTS, "-e./packages/nsa-spec", "-e./packages/nsa-torch", "matplotlib")
    session.run("python", "-m", "nsa_torch.demo", *session.posargs)


@nox.session(tags=["ci"])
def bench(session: nox.Session) -> None:
    """bench/tests on the CPU: the FLOP/byte model, CSV and threshold logic, the runner at tiny sizes."""
    session.install(*CONSTRAINTS, "-e./packages/nsa-spec", "-e./packages/nsa-torch", "matplotlib>=3.7",
                    *TEST_DEPS)
    session.run("pytest", "bench/tests", *session.posargs)


# ruff lets mkdocstrings format signatures; websocket-client drives Chromium in the browser check.
DOCS_DEPS = (
    "mkdocs-material>=9.5", "mkdocstrings-python>=1.10", "ruff>=0.6", "pytest>=8", "websocket-client>=1.6"
)


@nox.session(tags=["ci"])
def docs(session: nox.Session) -> None:
    """The spec site: `mkdocs build --strict`, then its tests (snippets, API coverage, Chromium render)."""
    packages = [f"-e./{p}" for p in ("packages/nsa-torch", "conformance") if os.path.isdir(p)]
    session.install(*CONSTRAINTS, SPEC, *packages, *DOCS_DEPS)
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})
    session.run("pytest", "docs/tests", *session.posargs)
