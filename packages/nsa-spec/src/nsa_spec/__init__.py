"""nsa-spec: the NumPy float64 reference of Native Sparse Attention and the backend contract.

Start with `NSAConfig`, `reference.nsa_forward` (raw streams, phi applied) or
`reference.nsa_attention` (the kernel contract), and `python -m nsa_spec.info`.
"""

from nsa_spec.config import NSAConfig
from nsa_spec.contract import (
    DecodeCache,
    DecodeResult,
    NSAGrads,
    NSAInputs,
    NSAOutput,
    validate_cache,
    validate_inputs,
)
from nsa_spec.errors import InvalidInputError, UnsupportedError

__version__ = "0.1.0"

__all__ = [
    "DecodeCache", "DecodeResult", "InvalidInputError", "NSAConfig", "NSAGrads", "NSAInputs",
    "NSAOutput", "UnsupportedError", "__version__", "validate_cache", "validate_inputs",
]
