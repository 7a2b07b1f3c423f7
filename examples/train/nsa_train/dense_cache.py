"""`DenseCache`: the keys and values of one `DenseAttention` layer, preallocated for decoding.

Storage is k, v [B, H, capacity, D], fixed at the prefill (the static buffers a CUDA graph
replays), with per-sequence lengths [B] on the device. A step writes each sequence's token at its
own length and attends over the whole capacity with a mask of the rows filled so far, so it reads
no length on the host.
"""

from __future__ import annotations

import torch
from nsa_spec.errors import InvalidInputError
from torch import Tensor


class DenseCache:
    """Decode state of one `DenseAttention` layer: `capacity` tokens per sequence, fixed.

    Empty at first: the layer's first call with it is a prefill, every later call appends one token
    per sequence. `length` is the longest sequence counted on the host from the calls (a replayed
    CUDA graph makes no call: keep replays within the capacity).
    """

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise InvalidInputError(f"capacity must be an int >= 1: capacity={capacity!r}")
        self.capacity = capacity
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.lengths: Tensor | None = None
        self.length = 0

    def _check_room(self, needed: int) -> None:
        if needed > self.capacity:
            raise InvalidInputError(
                f"cache is full: a sequence needs {needed} tokens but capacity={self.capacity} "
                f"(make DenseCache(capacity=...) larger)"
            )

    def fill(self, k: Tensor, v: Tensor) -> None:
        """Prefill an empty cache with a prompt's k, v [B, H, T, D] (stored detached)."""
        if self.k is not None:
            raise InvalidInputError(f"fill needs an empty cache: cache.length={self.length}")
        B, H, T, D = k.shape
        self._check_room(T)
        with torch.inference_mode(False), torch.no_grad():
            self.k = k.new_zeros(B, H, self.capacity, D)
            self.v = v.new_zeros(B, H, self.capacity, v.shape[3])
            self.lengths = torch.full((B,), T, dtype=torch.long, device=k.device)
        self.k[:, :, :T] = k.detach()
        self.v[:, :, :T] = v.detach()
        self.length = T

    def append(self, k: Tensor, v: Tensor) -> Tensor:
        """Write one token per sequence (k, v [B, H, 1, D]) at its length; return the mask
        [B, 1, 1, capacity] of the rows each sequence now attends to."""
        self._check_room(self.length + 1)
        batch = torch.arange(k.shape[0], device=k.device)
        self.k[batch, :, self.lengths] = k[:, :, 0]  # [B, H, D] at rows lengths[b]
        self.v[batch, :, self.lengths] = v[:, :, 0]
        self.lengths.add_(1)
        self.length += 1
        rows = torch.arange(self.capacity, device=k.device)
        return (rows < self.lengths[:, None])[:, None, None, :]
