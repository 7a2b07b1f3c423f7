"""Checkpoints that `torch.load(weights_only=True)` reads: tensors and primitive containers only.

run_dir/checkpoints/step-<step>/ holds `model.pt` (model, optimizer, step, config; written by
rank 0) and `rank-<r>.pt` (that rank's torch/numpy/python RNG states and data position);
run_dir/checkpoints/latest names the newest complete one. Files are written to a temporary name
and renamed, and `latest` moves only after every file is in place.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU, and CUDA when present) as tensors and primitives."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def folder(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:08d}"


def save(run_dir: Path, step: int, rank: int, shared: dict[str, Any] | None, own: dict[str, Any]) -> None:
    """Write this rank's part (`own`) and, on rank 0, `shared`; the caller then calls `mark_latest`."""
    path = folder(run_dir, step)
    path.mkdir(parents=True, exist_ok=True)
    if shared is not None:
        _save(shared, path / "model.pt")
    _save(own, path / f"rank-{rank}.pt")


def mark_latest(run_dir: Path, step: int, keep: int) -> None:
    """Point `latest` at step's folder (after every rank wrote) and delete all but the newest `keep`."""
    root = run_dir / "checkpoints"
    tmp = root / "latest.tmp"
    tmp.write_text(folder(run_dir, step).name)
    os.replace(tmp, root / "latest")
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old)


def latest(run_dir: Path) -> Path | None:
    marker = run_dir / "checkpoints" / "latest"
    return run_dir / "checkpoints" / marker.read_text().strip() if marker.exists() else None


def load(path: Path, rank: int, device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """(shared, own) of checkpoint folder `path` for `rank`, read with weights_only=True."""
    shared = torch.load(path / "model.pt", map_location=device, weights_only=True)
    own = torch.load(path / f"rank-{rank}.pt", map_location="cpu", weights_only=True)
    return shared, own
