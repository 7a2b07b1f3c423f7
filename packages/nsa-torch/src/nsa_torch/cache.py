"""`NSACache`: the decode state of one `NSAAttention` layer (NSA.md, Decode).

It holds an `nsa_spec.DecodeCache` of torch tensors: the raw cmp stream (phi's input), the
compressed tokens, the slc stream and a rolling buffer of the last w win tokens. A compressed
token is emitted when the raw length S reaches S >= l and (S - l) % d == 0. A prefill fills it
exactly as S single steps would; positions continue from `length`.
"""

from __future__ import annotations

from nsa_spec.config import NSAConfig
from nsa_spec.contract import DecodeCache
from torch import Tensor, nn

from nsa_torch.ops import decode
from nsa_torch.phi import apply_module


class NSACache:
    """Decode state of one layer; make one per layer and pass it to every call of that layer.

    Empty at first: the layer's first call with it is a prefill (any number of tokens), every
    later call appends one token. `length` is the number of tokens seen (the next position);
    `reads` [B, H] the tokens the last decode step read per (batch, kv head), as measured by
    the backend from its gathers (None before the first decode step).
    """

    def __init__(self) -> None:
        self.state: DecodeCache | None = None
        self.reads: Tensor | None = None

    @property
    def length(self) -> int:
        """Tokens in the cache (= the absolute position of the next token)."""
        return 0 if self.state is None else self.state.length

    def reset(self) -> None:
        """Forget every token."""
        self.state = None
        self.reads = None

    def fill(self, k_raw: Tensor, v_raw: Tensor, k_cmp: Tensor, v_cmp: Tensor, k_slc: Tensor,
             v_slc: Tensor, k_win: Tensor, v_win: Tensor, config: NSAConfig) -> None:
        """Prefill an empty cache with a whole prompt's streams [B, T, H, .]; stored detached."""
        w = config.window
        streams = (k_raw, v_raw, k_cmp, v_cmp, k_slc, v_slc, k_win[:, -w:], v_win[:, -w:])
        self.state = DecodeCache(*(x.detach() for x in streams), length=k_raw.shape[1])

    def append(self, k_raw: Tensor, v_raw: Tensor, k_slc: Tensor, v_slc: Tensor, k_win: Tensor,
               v_win: Tensor, config: NSAConfig, phi_k: nn.Module, phi_v: nn.Module) -> DecodeCache:
        """Append one token per sequence ([B, 1, H, .] each); emit a compressed token on schedule."""
        if self.state is None:
            B, _, H, dk = k_raw.shape
            empty = decode.empty_cache(B, H, dk, v_raw.shape[3], k_raw.dtype, k_raw.device)
        else:
            empty = self.state
        self.state = decode.append(
            empty, k_raw, v_raw, k_slc, v_slc, k_win, v_win, config, apply_module, {"k": phi_k, "v": phi_v}
        )
        return self.state
