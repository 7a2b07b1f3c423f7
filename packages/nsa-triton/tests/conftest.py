"""Without a CUDA device the kernels run under Triton's interpreter on CPU tensors; the variable
must be set before `nsa_triton.ops` is imported (Triton reads it when decorating kernels)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
