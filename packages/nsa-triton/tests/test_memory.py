"""The forward allocates nothing that grows faster than T once the block scores' chunk is reached
(issue 10: no T x blocks buffer)."""

from __future__ import annotations

import pytest
import torch
from nsa_spec import NSAConfig, NSAInputs
from nsa_spec.blocks import n_cmp
from nsa_triton.ops import compress, nsa
from torch.utils._python_dispatch import TorchDispatchMode

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CFG = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=8, top_n=4, window=16)  # T / 8 selection blocks
FACTORIES = {"aten::empty", "aten::empty_strided", "aten::zeros", "aten::full", "aten::ones",
             "aten::new_empty", "aten::new_zeros", "aten::new_full"}
CHUNK = 256


class Allocations(TorchDispatchMode):
    """The bytes of every tensor a factory op makes while it is active, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[tuple[int, ...], int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._schema.name in FACTORIES and isinstance(out, torch.Tensor):
            self.sizes.append((tuple(out.shape), out.numel() * out.element_size()))
        return out


def _forward_allocations(T: int, HQ: int, H: int, d: int = 8) -> list[tuple[tuple[int, ...], int]]:
    """The forward's allocations of more than CHUNK floats (those of the scores' chunks are not)."""
    g = torch.Generator().manual_seed(T)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(DEVICE)

    N = n_cmp(T, CFG)
    x = NSAInputs(r(1, T, HQ, d), r(1, N, H, d), r(1, N, H, d), r(1, T, H, d), r(1, T, H, d),
                  r(1, T, H, d), r(1, T, H, d), torch.sigmoid(r(1, T, HQ, 3)))
    with Allocations() as log:
        nsa.nsa_attention(x, CFG)
    return [(shape, size) for shape, size in log.sizes if size > 4 * CHUNK]


@pytest.mark.parametrize(("HQ", "H"), [(2, 2), (4, 2), (16, 1)])  # G = 1: one-pass top-n; G = 2, 16: chunks
def test_no_allocation_grows_faster_than_T(HQ, H, monkeypatch):
    """At 2T every allocation is at most ~2x its size at T (a T x blocks buffer would be 4x), the
    block scores' chunks cut to CHUNK floats (the default 256 MiB is not reached at these sizes)."""
    monkeypatch.setattr(compress, "SCORE_CHUNK_ELEMENTS", CHUNK)
    small, large = _forward_allocations(128, HQ, H), _forward_allocations(256, HQ, H)
    assert len(small) == len(large), "the forward allocated a different number of tensors at 2T"
    for (shape_s, bytes_s), (shape_l, bytes_l) in zip(small, large, strict=True):
        assert bytes_l <= 2.1 * bytes_s, f"{shape_s} at T=128 became {shape_l} at T=256"
