"""nsa-spec imports without torch and jax, and `python -m nsa_spec.info` reports the numpy backend."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Run in a fresh interpreter where torch and jax look uninstalled: every finder on sys.meta_path
# answers "not found" for them, as it would on a machine without them.
HIDE_TORCH_AND_JAX = textwrap.dedent(
    """
    import sys

    HIDDEN = {"torch", "jax", "jaxlib"}

    class Hide:
        def __init__(self, finder):
            self.finder = finder

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in HIDDEN:
                return None
            return self.finder.find_spec(name, path, target)

        def __getattr__(self, name):  # find_distributions etc.: entry points stay visible
            return getattr(self.finder, name)

    sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
    """
)

WITHOUT_TORCH_AND_JAX = HIDE_TORCH_AND_JAX + textwrap.dedent(
    """
    import importlib.util
    import warnings

    import numpy as np

    import nsa_spec
    import nsa_spec.backends
    import nsa_spec.counters
    import nsa_spec.info
    import nsa_spec.reference
    from nsa_spec import NSAConfig, UnsupportedError
    from nsa_spec.backends import Problem, backends, load_failures

    assert importlib.util.find_spec("torch") is None and importlib.util.find_spec("jax") is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # other installed backends may need torch: warned, not raised
        numpy_backend = backends()["numpy"]
    cfg = NSAConfig(cmp_len=4, cmp_stride=2, slc_len=8, top_n=3, window=4)
    x = np.ones((1, 9, 2, 4))
    out = nsa_spec.reference.nsa_forward(x, x, x, x, x, x, x, np.full((1, 9, 2, 3), 0.5), cfg)
    assert np.all(np.isfinite(out.o))
    problem = Problem("backward", "numpy", "cpu", "float64", 2, 2, 4, 4, cfg)
    assert any("jax" in r for r in numpy_backend.not_supported_reasons(problem))
    try:
        import nsa_spec.grad  # noqa: F401
    except UnsupportedError as exc:
        assert "nsa-spec[grad]" in str(exc)
    else:
        raise AssertionError("nsa_spec.grad imported without jax")
    assert not [m for m in sys.modules if m.partition(".")[0] in HIDDEN]
    print("imported without torch and jax; failed backends:", sorted(load_failures()))
    """
)


def run_python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, check=False)


def test_imports_without_torch_and_jax():
    result = run_python("-c", WITHOUT_TORCH_AND_JAX)
    assert result.returncode == 0, result.stderr
    assert "imported without torch and jax" in result.stdout


def test_the_hiding_hook_hides():
    """The hook used above does make torch and jax unimportable (else the test above proves nothing)."""
    result = run_python("-c", HIDE_TORCH_AND_JAX + "import jax")
    assert result.returncode != 0 and "No module named 'jax'" in result.stderr
    result = run_python("-c", HIDE_TORCH_AND_JAX + "import torch")
    assert result.returncode != 0 and "No module named 'torch'" in result.stderr


def test_info_lists_numpy_backend_available():
    result = run_python("-m", "nsa_spec.info")
    assert result.returncode == 0, result.stderr
    assert "numpy (priority 0): available" in result.stdout.splitlines()
    assert "float64" in result.stdout
