"""Evaluate a run's latest checkpoint: validation loss and needle retrieval by length and depth.

Needle accuracy at length L and depth f: the share of samples whose every answer digit is the
model's argmax (one teacher-forced forward per sample: the digits are predicted one position
after another exactly as greedy decoding would, given the correct earlier digits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from nsa_train import checkpoint
from nsa_train.config import from_dict
from nsa_train.data import Batches, needle_batch
from nsa_train.model import LM
from nsa_train.tokenizer import IGNORE


def load_model(run_dir: Path, device: torch.device) -> tuple[LM, dict[str, Any], int]:
    """The model of run_dir's latest checkpoint (weights_only load), its config dict and step."""
    path = checkpoint.latest(run_dir)
    if path is None:
        raise FileNotFoundError(f"no checkpoint under {run_dir}/checkpoints")
    shared = torch.load(path / "model.pt", map_location=device, weights_only=True)
    cfg = from_dict(shared["config"])
    model = LM(cfg.model).to(device)
    model.load_state_dict(shared["model"])
    return model.eval(), shared["config"], int(shared["step"])


@torch.no_grad()
def needle_accuracy(model: LM, length: int, depth: float, samples: int, digits: int, seed: int,
                    autocast: torch.autocast) -> float:
    device = next(model.parameters()).device
    rng = np.random.default_rng([seed, length, int(depth * 1000)])
    hits = 0
    for _ in range(samples):
        ids, targets = (torch.from_numpy(a).to(device) for a in needle_batch(rng, 1, length, digits, depth))
        with autocast:
            logits = model(ids)
        answer = targets != IGNORE
        hits += int(torch.equal(logits.argmax(-1)[answer], targets[answer]))
    return hits / samples


@torch.no_grad()
def validation_loss(model: LM, cfg: dict[str, Any], batches: int, autocast: torch.autocast) -> float:
    run = from_dict(cfg)
    data = Batches(run.data, run.train.batch_size, run.train.seed)
    device = next(model.parameters()).device
    total = 0.0
    for index in range(batches):
        ids, targets = (t.to(device) for t in data.batch("validation", index))
        with autocast:
            total += float(model(ids, targets))
    return total / batches


def evaluate(run_dir: Path, lengths: list[int], depths: list[float], samples: int, val_batches: int,
             device: torch.device, seed: int = 1234) -> dict[str, Any]:
    """Validation loss (val_batches > 0) and needle accuracy per (length, depth), latest checkpoint."""
    model, cfg, step = load_model(run_dir, device)
    dtype = getattr(torch, cfg["train"]["dtype"])
    autocast = torch.autocast("cuda", dtype=dtype, enabled=device.type == "cuda" and dtype != torch.float32)
    result: dict[str, Any] = {"run_dir": str(run_dir), "step": step, "attention": cfg["model"]["attention"]}
    if val_batches:
        result["val_loss"] = validation_loss(model, cfg, val_batches, autocast)
    digits = cfg["data"]["needle_digits"]
    result["needle"] = [{"length": length, "depth": depth,
                         "accuracy": needle_accuracy(model, length, depth, samples, digits, seed, autocast)}
                        for length in lengths for depth in depths]
    return result
