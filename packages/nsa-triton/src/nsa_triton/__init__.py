"""Triton forward kernels of Native Sparse Attention, registered as backend "triton"."""

from nsa_triton.backend import TritonBackend

__all__ = ["TritonBackend"]
