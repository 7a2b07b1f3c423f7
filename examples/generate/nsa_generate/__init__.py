"""Greedy generation with examples/train's LM (NSA or dense attention) and per-layer caches.

The model is examples/train's `nsa_train.model.LM`: importing this package puts examples/train on
the import path.
"""

from __future__ import annotations

import sys
from pathlib import Path

_TRAIN = str(Path(__file__).resolve().parents[2] / "train")
if _TRAIN not in sys.path:
    sys.path.insert(0, _TRAIN)
