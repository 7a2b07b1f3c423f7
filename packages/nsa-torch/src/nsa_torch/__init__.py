"""nsa-torch: the eager PyTorch backend "torch", `NSAAttention`, `NSACache` and `nsa_attention`.

`python -m nsa_torch.demo` draws which blocks each query selects and prints decode read counts.
"""

from nsa_torch.backend import TorchBackend
from nsa_torch.cache import NSACache
from nsa_torch.dispatch import explain
from nsa_torch.functional import nsa_attention
from nsa_torch.module import NSAAttention
from nsa_torch.phi import register_phi

__version__ = "0.1.0"

__all__ = [
    "NSAAttention", "NSACache", "TorchBackend", "__version__", "explain", "nsa_attention", "register_phi",
]
