"""`NSAConfig`: the block sizes and options of one NSA layer, with the paper's defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass

from nsa_spec.errors import InvalidInputError

GATE_KINDS = ("sigmoid", "softmax")
FORCED_BLOCKS = 3  # block 0, the current block and the one before it (NSA.md, Top-n)


@dataclass(frozen=True)
class NSAConfig:
    """Sizes of one NSA layer (NSA.md, Notation). Defaults are the paper's.

    Attributes:
        cmp_len: l, raw tokens summarised by one compressed token.
        cmp_stride: d, distance between the starts of consecutive compressed tokens.
        slc_len: l', tokens in one selection block.
        top_n: n, selected blocks per query, forced blocks included.
        window: w, keys seen by the sliding branch (the query's own token included).
        scale: softmax scale; None means 1/sqrt(dk) of the inputs.
        gate: "sigmoid" (the paper's) or "softmax" over the three branches.
    """

    cmp_len: int = 32
    cmp_stride: int = 16
    slc_len: int = 64
    top_n: int = 16
    window: int = 512
    scale: float | None = None
    gate: str = "sigmoid"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> NSAConfig:
        """Raise `InvalidInputError` naming the first rule this config breaks; return self."""
        for name in ("cmp_len", "cmp_stride", "slc_len", "top_n", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInputError(f"{name} must be an int: {name}={value!r}")
            if value < 1:
                raise InvalidInputError(f"{name} must be >= 1: {name}={value}")
        l, d, l_slc = self.cmp_len, self.cmp_stride, self.slc_len
        if l % d:
            raise InvalidInputError(
                f"cmp_stride (d) must divide cmp_len (l): cmp_len={l}, cmp_stride={d}"
            )
        if l_slc % d:
            raise InvalidInputError(
                f"cmp_stride (d) must divide slc_len (l'): slc_len={l_slc}, cmp_stride={d}"
            )
        if l > l_slc:
            raise InvalidInputError(
                f"cmp_len (l) must be <= slc_len (l'): cmp_len={l}, slc_len={l_slc}"
            )
        if self.top_n < FORCED_BLOCKS:
            raise InvalidInputError(
                f"top_n (n) must be >= {FORCED_BLOCKS}, the forced blocks (block 0, the current "
                f"block and the previous one): top_n={self.top_n}"
            )
        if self.scale is not None and (
            isinstance(self.scale, bool)
            or not isinstance(self.scale, (int, float))
            or not math.isfinite(self.scale)
            or self.scale <= 0
        ):
            raise InvalidInputError(f"scale must be a finite number > 0 or None: scale={self.scale!r}")
        if self.gate not in GATE_KINDS:
            raise InvalidInputError(f"gate must be one of {GATE_KINDS}: gate={self.gate!r}")
        return self

    def softmax_scale(self, dk: int) -> float:
        """The softmax scale for query/key head dim `dk`."""
        return float(self.scale) if self.scale is not None else 1.0 / math.sqrt(dk)


def check_config(config: object) -> NSAConfig:
    """`config` if it is a valid `NSAConfig`, else `InvalidInputError` naming what it is."""
    if not isinstance(config, NSAConfig):
        raise InvalidInputError(f"config must be an nsa_spec.NSAConfig: got {type(config).__name__}")
    return config.validate()
