"""Byte-level tokenizer: ids 0..255 are the UTF-8 bytes, then the special tokens."""

from __future__ import annotations

import numpy as np

BOS, EOS, PAD = 256, 257, 258
VOCAB_SIZE = 259
IGNORE = -100  # target id that the loss skips


def encode(text: str) -> np.ndarray:
    """UTF-8 bytes of `text` as int64 ids [len]."""
    return np.frombuffer(text.encode("utf-8", errors="replace"), dtype=np.uint8).astype(np.int64)


def decode(ids) -> str:
    """Bytes back to text; special tokens are dropped, invalid UTF-8 replaced."""
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")
