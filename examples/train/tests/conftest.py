"""Make `nsa_train` importable from examples/train (the one-thread fixture is examples/conftest.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
