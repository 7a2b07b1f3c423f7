"""Triton kernels, one module per NSA stage: compress, select, window; nsa composes them."""
