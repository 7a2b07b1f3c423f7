"""CUDA C++ kernels of Native Sparse Attention, registered as backend "cuda"."""

from nsa_cuda.backend import CudaBackend

__all__ = ["CudaBackend"]
