"""nsa-conformance: one pytest suite that holds any registered NSA backend to the float64 oracle.

Run `pytest --pyargs nsa_conformance.suite --nsa-backend NAME` (README.md lists every option).
"""

__version__ = "0.1.0"
