"""nsa-torch: the eager PyTorch backend "torch", `NSAAttention`, `NSACache` and `nsa_attention`."""

from nsa_torch.backend import TorchBackend

__version__ = "0.1.0"

__all__ = ["TorchBackend", "__version__"]
