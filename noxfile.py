"""Every session a user or CI runs. `nox --list` documents them; `nox -t ci` is what CI runs.

`nox -s build` puts every package's wheel in dist/; `install` checks each one alone in a fresh venv.
`conformance-triton` on the CPU runs TRITON_CPU_SUBSET under Triton's interpreter (which tests, and
why the rest is GPU-only: the comment above it); `-- --nsa-device cuda` runs the whole suite.
`conformance-cuda` needs a GPU and is not in `-t ci`; CI runs nsa-cuda's capability tests (`cuda`)
and compiles its kernels with nvcc (`cuda-compile`).
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True


# A session's virtualenv is removed when the session ends if less than this much disk is left free
# where it lies: each one holds torch, triton and jax (1-2.5 GiB) and `-t ci` makes ten of them, more
# than some CI machines have free (a run ran out of disk in its ninth session). With more room
# they stay, for `nox -r`.
PRUNE_BELOW_GIB = 20


def _prune_when_disk_is_low(session: nox.Session) -> None:
    location = getattr(session.virtualenv, "location", None)
    if location is None or not os.path.isdir(location):
        return
    free_gib = shutil.disk_usage(location).free / 2**30
    if free_gib < PRUNE_BELOW_GIB:
        session.log(f"{free_gib:.1f} GiB free (< {PRUNE_BELOW_GIB}): removing this session's venv {location}")
        shutil.rmtree(location, ignore_errors=True)


def pruning_session(**options) -> Callable:
    """`nox.session` whose venv is pruned when the session ends and the disk is low."""
    def decorate(func: Callable[[nox.Session], None]) -> Callable:
        @functools.wraps(func)
        def run(session: nox.Session) -> None:
            try:
                func(session)
            finally:
                _prune_when_disk_is_low(session)
        return nox.session(**options)(run)
    return decorate

CONSTRAINTS = ("-c", "constraints.txt")
SPEC = "-e./packages/nsa-spec[grad]"
TEST_DEPS = ("pytest>=8", "hypothesis>=6.100", "pytest-xdist>=3.5")
# The CPU test sessions spread their tests over every core (pytest-xdist; CI has 2): the Triton
# interpreter and the float64 oracle are single-threaded.
CPU_WORKERS = ("-n", "auto")

# Every distributable package, in dependency order: its source folder, its import name and the
# backend that `python -m nsa_spec.info` must then list as loaded.
PACKAGES = {
    "nsa-spec": ("packages/nsa-spec", "nsa_spec", "numpy"),
    "nsa-torch": ("packages/nsa-torch", "nsa_torch", "torch"),
    "nsa-triton": ("packages/nsa-triton", "nsa_triton", "triton"),
    "nsa-cuda": ("packages/nsa-cuda", "nsa_cuda", "cuda"),
    "nsa-conformance": ("conformance", "nsa_conformance", "numpy"),
}
DIST = "dist"

# What each conformance target installs beside nsa-spec and the suite.
BACKEND_PACKAGES = {
    "numpy": (),
    "torch": ("-e./packages/nsa-torch",),
    "triton": ("-e./packages/nsa-torch", "-e./packages/nsa-triton"),
    "cuda": ("-e./packages/nsa-torch", "-e./packages/nsa-triton", "-e./packages/nsa-cuda"),
}
# Backends that run only on a GPU: their conformance session defaults to --nsa-device cuda and is
# not tagged ci (the suite refuses a backend that is unavailable on the machine).
GPU_ONLY = ("cuda",)

# The CPU run of the triton conformance suite under Triton's interpreter, which runs each kernel
# program in Python, some 10^4 times slower than a GPU: one small case of every stage, of the tie
# rule, of each invariant and of packed sequences, in float32, the forward stages again in
# bfloat16, and the whole capability and invalid-input catalogue. The quick backward and decode
# cases are in it and run once the backend claims those ops (the suite skips unclaimed ones). The
# rest, float16, the bitwise-determinism check (programs run one after another here, so it could not
# see a race) and the Hypothesis shapes, is GPU-only: conformance/README.md.
# test_gqa_consistency runs at HQ8 (G=4), not HQ16: at G=16 the interpreter's reordered heads
# differ by 4.8e-7 in float32 against the 3.5e-7 the invariant allows (it compares the backend with
# itself, so only the one-ulp floor applies, and the interpreter's NumPy matmul rounds rows by
# their position); the G=16 cases passed compiled on the H200 (bench/results/nvidia-h200/logs-2026-12-02).
TRITON_CPU_FLOAT32 = (
    "test_forward[B1-T1-", "test_forward[B1-T7-", "test_forward[B1-T77-", "test_forward[B1-T299-",
    "test_branch[B1-T1-", "test_branch[B1-T7-", "test_branch[B1-T77-", "test_tie_rule[B1-T299-",
    "test_causality[B1-T77-", "test_every_allowed_key_gets_weight[B1-T7-",
    "test_every_allowed_key_gets_weight[B1-T77-HQ8-H1-dk16-dv16-l16d8s32n3w7-cmp",
    "test_gqa_consistency[B1-T53-HQ8-", "test_full_attention_equivalence[B1-T20-",
    "test_varlen_equals_separate_runs[B1-T90-", "test_varlen_poison_does_not_leak",
    "test_large_scores[B1-T45-", "test_backward[B2-T61-", "test_prefill_equals_decode[B2-T70-",
    "test_varied_lengths_decode_together[B3-T70-", "test_select_sequences[B3-T70-",
    "test_unused_rows_are_never_read[B3-T70-",
)
TRITON_CPU_BFLOAT16 = ("test_forward[B1-T77-", "test_branch[B1-T77-")
TRITON_CPU_SUBSET = (
    "-k", f"test_contract or (float32 and ({' or '.join(TRITON_CPU_FLOAT32)}))"
          f" or (bfloat16 and ({' or '.join(TRITON_CPU_BFLOAT16)}))",
    "--nsa-dtype", "float32", "--nsa-dtype", "bfloat16",
)


def _build_wheels(session: nox.Session, dest: str) -> None:
    """One wheel per package into `dest`, replacing wheels an earlier build left there."""
    for old in Path(dest).glob("nsa_*.whl"):
        old.unlink()
    folders = [f"./{folder}" for folder, _, _ in PACKAGES.values()]
    session.run("python", "-m", "pip", "wheel", "-q", "--no-deps", "-w", dest, *folders)


@pruning_session(tags=["ci"])
def build(session: nox.Session) -> None:
    """Every package's wheel into dist/: then `pip install --find-links dist nsa-triton` (README)."""
    _build_wheels(session, DIST)
    session.log("wheels: " + ", ".join(sorted(p.name for p in Path(DIST).glob("nsa_*.whl"))))


# Run in each install venv: the package imports, its backend is registered and nothing failed to load.
LOADS = """import {module}
from nsa_spec.backends import backends, load_failures
assert '{backend}' in backends() and not load_failures(), (sorted(backends()), load_failures())"""


@pruning_session(tags=["ci"])
def install(session: nox.Session) -> None:
    """Each package alone from a fresh wheelhouse into a fresh venv: it imports and its backend loads."""
    tmp = Path(session.create_tmp())
    wheelhouse = str(tmp / "wheelhouse")
    _build_wheels(session, wheelhouse)
    constraints = str(Path("constraints.txt").resolve())
    for name, (_, module, backend) in PACKAGES.items():
        venv = tmp / f"venv-{name}"
        shutil.rmtree(venv, ignore_errors=True)
        session.run("python", "-m", "venv", str(venv))
        python = str(venv / "bin" / "python")
        session.run(python, "-m", "pip", "install", "-q", "--no-compile", "--find-links", wheelhouse,
                    "-c", constraints, name, external=True)
        session.run(python, "-c", LOADS.format(module=module, backend=backend), external=True)
        session.run(python, "-m", "nsa_spec.info", external=True)
        shutil.rmtree(venv)


@pruning_session(tags=["ci"])
def lint(session: nox.Session) -> None:
    """ruff over the whole workspace."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")


def _conformance_session(backend: str) -> None:
    def conformance(session: nox.Session) -> None:
        xfail = f"packages/nsa-{backend}/conformance-xfail.txt"
        known_gaps = ("--nsa-xfail", xfail) if os.path.exists(xfail) else ()
        session.install(*CONSTRAINTS, SPEC, *BACKEND_PACKAGES[backend], "-e./conformance", *TEST_DEPS)
        asked_gpu = "cuda" in session.posargs or "--nsa-device=cuda" in session.posargs
        on_gpu = asked_gpu or backend in GPU_ONLY
        subset, env = (TRITON_CPU_SUBSET, {"TRITON_INTERPRET": "1"}) if backend == "triton" and not on_gpu \
            else ((), {})
        workers = () if on_gpu else CPU_WORKERS
        device = ("--nsa-device", "cuda") if backend in GPU_ONLY and not asked_gpu else ()
        session.run("pytest", "--pyargs", "nsa_conformance.suite", "--nsa-backend", backend,
                    *known_gaps, *subset, *workers, *device, *session.posargs, env=env)
        if backend == "numpy":
            session.run("pytest", "conformance/tests")

    conformance.__doc__ = CONFORMANCE_DOCS.get(
        backend, "The conformance suite against one backend (conformance/README.md).")
    pruning_session(name=f"conformance-{backend}", tags=[] if backend in GPU_ONLY else ["ci"])(conformance)


CONFORMANCE_DOCS = {
    "numpy": "The conformance suite against the float64 reference, then the suite's own meta-test.",
    "triton": "The suite against triton: on the CPU TRITON_CPU_SUBSET under Triton's interpreter; "
              "`-- --nsa-device cuda` runs all of it on a GPU.",
    "cuda": "The suite against cuda on a GPU (needs nvcc: the kernels build on first use); not in -t ci.",
}


for _backend in BACKEND_PACKAGES:
    _conformance_session(_backend)


@pruning_session(tags=["ci"])
def spec(session: nox.Session) -> None:
    """nsa-spec's own tests: block math, reference, counters, gradients, contract."""
    session.install(*CONSTRAINTS, SPEC, *TEST_DEPS)
    session.run("pytest", "packages/nsa-spec/tests", *CPU_WORKERS, *session.posargs)


@pruning_session(tags=["ci"])
def torch(session: nox.Session) -> None:
    """nsa-torch's own tests: ops, module, cache, dispatch, toy training, the transformers conversion."""
    session.install(*CONSTRAINTS, SPEC, "-e./packages/nsa-torch[transformers]", "matplotlib", *TEST_DEPS)
    session.run("pytest", "packages/nsa-torch/tests", *CPU_WORKERS, *session.posargs)


@pruning_session(tags=["ci"])
def train(session: nox.Session) -> None:
    """examples/train on the CPU: tiny training, exact resume, SIGTERM, 2-process gloo DDP (torchrun);
    then examples/generate, which uses its model: cached decoding equals re-running the prefix, the CLI."""
    session.install(*CONSTRAINTS, SPEC, "-e./packages/nsa-torch", "pyyaml>=6", "tqdm>=4.60",
                    "matplotlib>=3.7", *TEST_DEPS)
    session.run("pytest", "examples/train/tests", *session.posargs, env={"OMP_NUM_THREADS": "1"})
    session.run("pytest", "examples/generate/tests", *session.posargs, env={"OMP_NUM_THREADS": "1"})


@pruning_session(tags=["ci"])
def triton(session: nox.Session) -> None:
    """nsa-triton's kernel tests against the float64 oracle, under Triton's interpreter on the CPU."""
    session.install(*CONSTRAINTS, SPEC, "-e./packages/nsa-torch", "-e./packages/nsa-triton", *TEST_DEPS)
    session.run("pytest", "packages/nsa-triton/tests", *CPU_WORKERS, *session.posargs,
                env={"TRITON_INTERPRET": "1"})


@pruning_session(tags=["ci"])
def cuda(session: nox.Session) -> None:
    """nsa-cuda's own tests without a GPU: capability honesty, refusal reasons, input checks."""
    session.install(*CONSTRAINTS, SPEC, *BACKEND_PACKAGES["cuda"], *TEST_DEPS)
    session.run("pytest", "packages/nsa-cuda/tests", *CPU_WORKERS, *session.posargs)


CUDA_SOURCES = "packages/nsa-cuda/src/nsa_cuda/csrc"
CUDA_ARCHES = ("80", "90a")  # the portable mma.sync path's floor, and Hopper
# The standard (C++20) and defines torch.utils.cpp_extension uses for every .cu it builds: the kernels
# must compile under them.
TORCH_NVCC_FLAGS = ("-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
                    "--expt-relaxed-constexpr")


def _nvcc() -> str | None:
    """nvcc on PATH, else in $CUDA_HOME/bin."""
    found = shutil.which("nvcc")
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if found is None and home and (Path(home) / "bin" / "nvcc").is_file():
        found = str(Path(home) / "bin" / "nvcc")
    return found


@pruning_session(name="cuda-compile", tags=["ci"], venv_backend="none")
def cuda_compile(session: nox.Session) -> None:
    """Every .cu of nsa-cuda through `nvcc -c` for sm_80 and sm_90a, warnings as errors, no GPU needed."""
    nvcc = _nvcc()
    if nvcc is None:
        session.error("nvcc not found on PATH or in $CUDA_HOME/bin: the compile check of nsa-cuda's kernels "
                      "needs the CUDA toolkit (CI has it; install it or set CUDA_HOME)")
    sources = sorted(Path(CUDA_SOURCES).glob("*.cu"))
    if not sources:
        session.error(f"no .cu file under {CUDA_SOURCES}")
    out = Path(session.create_tmp()) / "cuda-objects"
    out.mkdir(parents=True, exist_ok=True)
    gencode = [f"-gencode=arch=compute_{arch},code=sm_{arch}" for arch in CUDA_ARCHES]
    for source in sources:
        session.run(nvcc, "-c", "-std=c++20", "-O3", *TORCH_NVCC_FLAGS, *gencode, "-Werror", "all-warnings",
                    "-Xptxas", "-warn-spills", "--resource-usage", "-o", str(out / f"{source.stem}.o"),
                    str(source), external=True)


@pruning_session()
def demo(session: nox.Session) -> None:
    """Draw NSA's block selection (demo-out/selection.png) and print measured decode reads."""
    session.install(*CONSTRAINTS, "-e./packages/nsa-spec", "-e./packages/nsa-torch", "matplotlib")
    session.run("python", "-m", "nsa_torch.demo", *session.posargs)


@pruning_session(tags=["ci"])
def bench(session: nox.Session) -> None:
    """bench/tests on the CPU: the FLOP/byte model, CSV and threshold logic, the runner at tiny sizes."""
    session.install(*CONSTRAINTS, "-e./packages/nsa-spec", "-e./packages/nsa-torch", "matplotlib>=3.7",
                    *TEST_DEPS)
    session.run("pytest", "bench/tests", *session.posargs)


# ruff lets mkdocstrings format signatures; websocket-client drives Chromium in the browser check.
DOCS_DEPS = (
    "mkdocs-material>=9.5", "mkdocstrings-python>=1.10", "ruff>=0.6", "pytest>=8", "websocket-client>=1.6"
)


def _ensure_chromium(session: nox.Session) -> None:
    """Chromium for the browser check (NSA_CHROMIUM, default /usr/bin/chromium): Debian's if missing."""
    if Path(os.environ.get("NSA_CHROMIUM", "/usr/bin/chromium")).is_file():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        session.error("the docs browser check needs Chromium: install it (Debian/Ubuntu: "
                      "sudo apt-get install chromium) or point NSA_CHROMIUM at a Chromium binary")
    session.log("installing Debian's chromium for the docs browser check")
    apt = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=apt)
    session.run("apt-get", "install", "-y", "-qq", "chromium", external=True, env=apt)


@pruning_session(tags=["ci"])
def docs(session: nox.Session) -> None:
    """The spec site: `mkdocs build --strict`, then its tests (snippets, API coverage, Chromium render)."""
    _ensure_chromium(session)
    # nsa-torch with transformers: the API coverage test imports nsa_torch.integrations.transformers.
    packages = [f"-e./{p}{extra}" for p, extra in
                (("packages/nsa-torch", "[transformers]"), ("packages/nsa-triton", ""),
                 ("packages/nsa-cuda", ""), ("conformance", ""))
                if os.path.isdir(p)]
    session.install(*CONSTRAINTS, SPEC, *packages, *DOCS_DEPS)
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})
    session.run("pytest", "docs/tests", *session.posargs)
