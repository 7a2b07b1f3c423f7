"""`NSACache`: the decode state of one `NSAAttention` layer (NSA.md, Decode).

It holds an `nsa_spec.DecodeCache` of torch tensors: the raw cmp stream (phi's input), the
compressed tokens, the slc stream and a rolling buffer of the last w win tokens. A compressed
token is emitted when the raw length S reaches S >= l and (S - l) % d == 0. A prefill fills it
exactly as S single steps would; positions continue from `length`. The cache records what it
was filled with (batch size, kv heads, head dims, dtype, device, config); a later call that
differs in any of them raises `InvalidInputError` naming both values.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from nsa_spec.config import NSAConfig, check_config
from nsa_spec.contract import DecodeCache
from nsa_spec.errors import InvalidInputError
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


def _mismatch(filled: FilledWith, call: FilledWith) -> None:
    for f in fields(FilledWith):
        old, new = getattr(filled, f.name), getattr(call, f.name)
        if old != new:
            label = _LABELS[f.name]
            raise InvalidInputError(
                f"a cache takes calls like the one that filled it: cache was filled with {label}={old}, "
                f"this call has {label.split()[-1]}={new} (reset() it or use a new NSACache)"
            )


class NSACache:
    """Decode state of one layer; make one per layer and pass it to every call of that layer.

    Empty at first: the layer's first call with it is a prefill (any number of tokens), every
    later call appends one token. `length` is the number of tokens seen (the next position);
    `reads` [B, H] the tokens the last decode step read per (batch, kv head), as measured by
    the backend from its gathers (None before the first decode step); `filled_with` what the
    first call had (None while empty).
    """

    def __init__(self) -> None:
        self.state: DecodeCache | None = None
        self.reads: Tensor | None = None
        self.filled_with: FilledWith | None = None

    @property
    def length(self) -> int:
        """Tokens in the cache (= the absolute position of the next token)."""
        return 0 if self.state is None else self.state.length

    def reset(self) -> None:
        """Forget every token."""
        self.state = None
        self.reads = None
        self.filled_with = None

    def fill(self, k_raw: Tensor, v_raw: Tensor, k_cmp: Tensor, v_cmp: Tensor, k_slc: Tensor,
             v_slc: Tensor, k_win: Tensor, v_win: Tensor, config: NSAConfig) -> None:
        """Prefill an empty cache with a whole prompt's streams [B, T, H, .]; stored detached."""
        check_config(config)
        if self.state is not None:
            raise InvalidInputError(
                f"fill needs an empty cache: cache.length={self.length} (reset() it first)"
            )
        w = config.window
        streams = (k_raw, v_raw, k_cmp, v_cmp, k_slc, v_slc, k_win[:, -w:], v_win[:, -w:])
        self.state = DecodeCache(*(x.detach() for x in streams), length=k_raw.shape[1])
        self.filled_with = FilledWith.of(k_raw, v_raw, config)

    def append(self, k_raw: Tensor, v_raw: Tensor, k_slc: Tensor, v_slc: Tensor, k_win: Tensor,
               v_win: Tensor, config: NSAConfig, phi_k: nn.Module, phi_v: nn.Module) -> DecodeCache:
        """Append one token per sequence ([B, 1, H, .] each); emit a compressed token on schedule.

        Raises `InvalidInputError` when the batch size, kv heads, head dims, dtype, device or
        config differ from what the cache was filled with.
        """
        call = FilledWith.of(k_raw, v_raw, check_config(config))
        if self.filled_with is None:
            self.filled_with = call
        else:
            _mismatch(self.filled_with, call)
        empty = self.state
        if empty is None:
            empty = decode.empty_cache(call.batch, call.heads, call.dk, call.dv, call.dtype, call.device)
        self.state = decode.append(
            empty, k_raw, v_raw, k_slc, v_slc, k_win, v_win, config, apply_module, {"k": phi_k, "v": phi_v}
        )
        return self.state
