"""CUDA kernels, one module per NSA stage (select); nsa composes them with the triton stages."""
