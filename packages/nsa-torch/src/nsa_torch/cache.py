"""`NSACache`: the decode state of one `NSAAttention` layer (NSA.md, Decode).

It holds an `nsa_spec.DecodeCache` of torch tensors (layout v2): rings of the last l raw cmp
tokens (phi's input) and of the last w win tokens, the compressed tokens and the slc stream,
preallocated to a capacity, and per-sequence lengths on the device. A compressed token is
emitted when a sequence's length S reaches S >= l and (S - l) % d == 0. A prefill fills it
exactly as S single steps would; each sequence's positions continue from its own length.

Storage grows geometrically (doubles, one copy) when a step would outgrow it, so steps never
copy the cache; `NSACache(capacity=C, growable=False)` keeps one storage of C tokens per sequence
(the static buffers a CUDA graph replays) and raises when a step would pass it. `select` drops or
reorders sequences and `join` adds other caches' sequences (serving: sequences of different
lengths decode together). The cache records what it was filled with (kv heads, head dims,
dtype, device, config, batch size); a later call that differs raises `InvalidInputError` naming
both values.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from nsa_spec.config import NSAConfig, check_config
from nsa_spec.contract import DecodeCache
from nsa_spec.errors import InvalidInputError
from nsa_spec.reference.decode import batch_indices_of
from torch import Tensor, nn

from nsa_torch.ops import decode
from nsa_torch.phi import apply_module


@dataclass(frozen=True)
class FilledWith:
    """What a cache was filled with: every later call must match it."""

    batch: int
    heads: int
    dk: int
    dv: int
    dtype: torch.dtype
    device: torch.device
    config: NSAConfig

    @classmethod
    def of(cls, k_raw: Tensor, v_raw: Tensor, config: NSAConfig) -> FilledWith:
        """From one call's raw cmp streams k_raw [B, T, H, dk], v_raw [B, T, H, dv]."""
        B, _, H, dk = k_raw.shape
        return cls(B, H, dk, v_raw.shape[3], k_raw.dtype, k_raw.device, config)


_LABELS = {"batch": "batch size B", "heads": "kv heads H", "dk": "key head dim dk",
           "dv": "value head dim dv", "dtype": "dtype", "device": "device", "config": "config"}


def _mismatch(filled: FilledWith, call: FilledWith, skip: tuple[str, ...] = ()) -> None:
    for f in fields(FilledWith):
        old, new = getattr(filled, f.name), getattr(call, f.name)
        if old != new and f.name not in skip:
            label = _LABELS[f.name]
            raise InvalidInputError(
                f"a cache takes calls like the one that filled it: cache was filled with {label}={old}, "
                f"this call has {label.split()[-1]}={new} (reset() it or use a new NSACache)"
            )


def _storage() -> contextlib.ExitStack:
    """Where new storage is made: ordinary tensors (not inference tensors), so steps inside and
    outside `torch.inference_mode()` may keep writing to them; no autograd."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode(False))
    stack.enter_context(torch.no_grad())
    return stack


class NSACache:
    """Decode state of one layer; make one per layer and pass it to every call of that layer.

    Empty at first: the layer's first call with it is a prefill (any number of tokens), every
    later call appends one token to every sequence. `capacity` (tokens per sequence) sizes the
    storage at the prefill (default: the prompt's length); with `growable=False` it is fixed.
    `lengths` [B] (long, on the cache's device) are the sequences' tokens and next positions;
    `length` the longest of them, counted on the host from the calls (a replayed CUDA graph makes
    no call: keep replays within the capacity). `reads` [B, H] the tokens the last decode step
    read per (batch, kv head), as measured by the backend from its gathers (None before the first
    decode step); `filled_with` what the first call had (None while empty).
    """

    def __init__(self, capacity: int | None = None, growable: bool = True) -> None:
        bad = isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1
        if capacity is not None and bad:
            raise InvalidInputError(f"capacity must be an int >= 1 or None: capacity={capacity!r}")
        if not growable and capacity is None:
            raise InvalidInputError("growable=False needs a capacity (tokens per sequence): capacity=None")
        self.requested = capacity
        self.growable = growable
        self.reset()

    @property
    def length(self) -> int:
        """Tokens of the longest sequence (0 when empty), from host bookkeeping: no device read."""
        return int(self._lengths.max(initial=0))

    @property
    def lengths(self) -> Tensor | None:
        """Tokens per sequence [B] (long, on the cache's device; None while empty)."""
        return None if self.state is None else self.state.lengths

    @property
    def capacity(self) -> int:
        """Tokens per sequence the storage holds (the requested capacity while empty, else 0)."""
        return self.state.capacity if self.state is not None else self.requested or 0

    def reset(self) -> None:
        """Forget every token and sequence."""
        self.state: DecodeCache | None = None
        self.reads: Tensor | None = None
        self.filled_with: FilledWith | None = None
        self._lengths = np.zeros(0, dtype=np.int64)

    def _capacity_for(self, needed: int) -> int:
        """Storage capacity that holds `needed` tokens per sequence, or a clear error."""
        C = self.capacity
        if needed <= C:
            return C
        if not self.growable:
            raise InvalidInputError(
                f"cache is full: a sequence needs {needed} tokens but capacity={C} and growable=False "
                f"(make NSACache(capacity=...) larger, or drop sequences with select())"
            )
        return max(needed, 2 * C)

    def fill(self, k_raw: Tensor, v_raw: Tensor, k_cmp: Tensor, v_cmp: Tensor, k_slc: Tensor,
             v_slc: Tensor, k_win: Tensor, v_win: Tensor, config: NSAConfig) -> None:
        """Prefill an empty cache with a whole prompt's streams [B, T, H, .]; stored detached."""
        check_config(config)
        if self.state is not None:
            raise InvalidInputError(
                f"fill needs an empty cache: cache.length={self.length} (reset() it first)"
            )
        B, T = k_raw.shape[:2]
        capacity = self._capacity_for(T) if self.requested else T
        streams = (x.detach() for x in (k_raw, v_raw, k_slc, v_slc, k_win, v_win))
        with _storage():
            self.state = decode.from_streams(*streams, config, capacity=capacity,
                                             compressed=(k_cmp.detach(), v_cmp.detach()))
        self.filled_with = FilledWith.of(k_raw, v_raw, config)
        self._lengths = np.full(B, T, dtype=np.int64)

    def check_batch(self, batch: int) -> None:
        """Raise `InvalidInputError` unless a call of `batch` sequences fits a filled cache."""
        if self.filled_with is not None:
            _mismatch(self.filled_with, dataclasses.replace(self.filled_with, batch=batch))

    def append(self, k_raw: Tensor, v_raw: Tensor, k_slc: Tensor, v_slc: Tensor, k_win: Tensor,
               v_win: Tensor, config: NSAConfig, phi_k: nn.Module, phi_v: nn.Module) -> DecodeCache:
        """Append one token to every sequence ([B, 1, H, .] each) in place; emit compressed tokens
        on each sequence's schedule. Grows the storage (doubling) when a sequence would outgrow it.

        Raises `InvalidInputError` when the batch size, kv heads, head dims, dtype, device or
        config differ from what the cache was filled with, or a fixed capacity would be passed.
        """
        call = FilledWith.of(k_raw, v_raw, check_config(config))
        if self.filled_with is None:
            self.filled_with = call
        else:
            _mismatch(self.filled_with, call)
        with _storage():
            if self.state is None:
                self.state = decode.empty_cache(call.batch, call.heads, call.dk, call.dv,
                                                self._capacity_for(1), config, call.dtype, call.device)
                self._lengths = np.zeros(call.batch, dtype=np.int64)
            capacity = self._capacity_for(self.length + 1)
            if capacity != self.state.capacity:
                self.state = decode.resize(self.state, capacity, config)
        self.state = decode.append(self.state, k_raw, v_raw, k_slc, v_slc, k_win, v_win, config,
                                   apply_module, {"k": phi_k, "v": phi_v})
        self._lengths = self._lengths + 1
        return self.state

    def select(self, batch_indices: Any) -> None:
        """Keep the sequences at `batch_indices` (ints), in that order: drop, reorder or repeat."""
        if self.state is None:
            raise InvalidInputError("select needs a filled cache: cache.length=0")
        if isinstance(batch_indices, Tensor):
            batch_indices = batch_indices.tolist()
        idx = batch_indices_of(batch_indices, len(self._lengths))
        with _storage():
            self.state = decode.select(self.state, idx, self.filled_with.config)
        self._lengths = self._lengths[idx]
        if self.reads is not None:
            self.reads = self.reads[torch.as_tensor(idx, device=self.reads.device)]
        self.filled_with = dataclasses.replace(self.filled_with, batch=len(idx))

    def join(self, *others: NSACache) -> None:
        """Add the sequences of `others` (filled caches of the same layer) after this cache's own.

        Storage is this cache's capacity grown to the largest one involved (fixed: it must hold
        every sequence); `reads` is cleared.
        """
        caches = [self, *others]
        if any(c.state is None for c in caches):
            raise InvalidInputError("join needs filled caches: one of them has cache.length=0")
        for other in others:
            _mismatch(self.filled_with, other.filled_with, skip=("batch",))
        config = self.filled_with.config
        longest = max(c.length for c in caches)
        capacity = max(c.capacity for c in caches) if self.growable else self._capacity_for(longest)
        with _storage():
            states = [c.state if c.state.capacity == capacity else decode.resize(c.state, capacity, config)
                      for c in caches]
            self.state = decode.join(states, config)
        self._lengths = np.concatenate([c._lengths for c in caches])
        self.reads = None
        self.filled_with = dataclasses.replace(self.filled_with, batch=len(self._lengths))
