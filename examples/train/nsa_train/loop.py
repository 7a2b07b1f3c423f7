"""The training loop: `train(config)`; one process, or one per GPU/CPU rank under torchrun (DDP).

Each step: batch `step` of the train split, forward + loss, backward, gradient clipping, AdamW at
the scheduled learning rate. Every `ops.heartbeat_every` steps a heartbeat (loss averaged over
the steps since the last one and over ranks, tokens/s, memory, NSA gate means and histograms);
every `train.eval_every` steps the validation loss; every `ops.checkpoint_every` steps, at the
end and after SIGTERM/SIGINT a checkpoint. A run resumes from run_dir's latest checkpoint
(`ops.resume`), and continues exactly: the loss trajectory equals the uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from nsa_spec.errors import InvalidInputError
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from nsa_train import checkpoint
from nsa_train.config import RunConfig
from nsa_train.data import Batches
from nsa_train.model import LM, GateRecorder, parameter_count
from nsa_train.operations import Heartbeat, StopFlag, Watchdog, install_stack_dump, memory_stats


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init_distributed(device_kind: str) -> Ranks:
    """torchrun's environment -> a process group (nccl on CUDA, gloo on the CPU); else one rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Ranks(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(kind: str, ranks: Ranks) -> torch.device:
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        torch.cuda.set_device(ranks.local)
        return torch.device("cuda", ranks.local)
    if kind != "cpu":
        raise InvalidInputError(f"train.device must be auto, cpu or cuda: got {kind!r}")
    return torch.device("cpu")


def learning_rate(step: int, cfg: RunConfig) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay from `lr` to `min_lr` at `steps`."""
    t = cfg.train
    if step < t.warmup:
        return t.lr * (step + 1) / t.warmup
    progress = min(1.0, (step - t.warmup) / max(1, t.steps - t.warmup))
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not norms, biases, phi position embeddings)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=tuple(cfg.train.betas), foreach=False)


def _mean_over_ranks(value: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    if ranks.distributed:
        value = value.clone()
        dist.all_reduce(value)
        value /= ranks.world
    return value


class Trainer:
    """State of one run on one rank; `run()` trains to `train.steps` or until stopped."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        kind = cfg.train.device
        on_cuda = kind == "cuda" or (kind == "auto" and torch.cuda.is_available())
        self.ranks = init_distributed("cuda" if on_cuda else "cpu")
        self.device = pick_device(kind, self.ranks)
        if cfg.ops.threads:
            torch.set_num_threads(cfg.ops.threads)
        self.run_dir = Path(cfg.ops.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        torch.manual_seed(cfg.train.seed)
        self.model = LM(cfg.model).to(self.device)
        self.gates = GateRecorder(self.model)
        self.optimizer = make_optimizer(self.model, cfg)
        self.data = Batches(cfg.data, cfg.train.batch_size, cfg.train.seed, self.ranks.rank, self.ranks.world)
        self.step = 0
        self.resumed_from: str | None = None
        if cfg.ops.resume and (path := checkpoint.latest(self.run_dir)) is not None:
            self._restore(path)
        self.wrapped = (DistributedDataParallel(self.model, device_ids=[self.ranks.local] if self.device.type
                        == "cuda" else None) if self.ranks.distributed else self.model)
        use_autocast = self.device.type == "cuda" and cfg.train.dtype != "float32"
        self.autocast = torch.autocast("cuda", dtype=getattr(torch, cfg.train.dtype), enabled=use_autocast)

    def _restore(self, path: Path) -> None:
        shared, own = checkpoint.load(path, self.ranks.rank, self.device)
        if shared["config"]["model"] != self.cfg.to_dict()["model"]:
            raise InvalidInputError(
                f"the checkpoint {path} was written by another model config: {shared['config']['model']} "
                f"!= {self.cfg.to_dict()['model']} (use a new ops.run_dir or ops.resume=false)"
            )
        self.model.load_state_dict(shared["model"])
        self.optimizer.load_state_dict(shared["optimizer"])
        self.step = int(shared["step"])
        checkpoint.set_rng_state(own["rng"])
        self.data.load_state_dict(own["data"])
        self.resumed_from = str(path)

    def save(self) -> None:
        shared = None
        if self.ranks.rank == 0:
            shared = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                      "step": self.step, "config": self.cfg.to_dict()}
        own = {"rng": checkpoint.rng_state(), "data": self.data.state_dict()}
        checkpoint.save(self.run_dir, self.step, self.ranks.rank, shared, own)
        if self.ranks.distributed:
            dist.barrier()
        if self.ranks.rank == 0:
            checkpoint.mark_latest(self.run_dir, self.step, self.cfg.ops.keep_checkpoints)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over `eval_batches` validation batches, averaged over ranks."""
        self.model.eval()
        total = torch.zeros((), device=self.device)
        for index in range(self.cfg.train.eval_batches):
            ids, targets = (t.to(self.device) for t in self.data.batch("validation", index))
            with self.autocast:
                total += self.model(ids, targets).float()
        self.model.train()
        return float(_mean_over_ranks(total / self.cfg.train.eval_batches, self.ranks))

    def train_step(self) -> torch.Tensor:
        ids, targets = (t.to(self.device, non_blocking=True) for t in self.data.batch("train", self.step))
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, self.cfg)
        with self.autocast:
            loss = self.wrapped(ids, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.step += 1
        return loss.detach()

    def _stop_requested(self, stop: StopFlag) -> bool:
        """Whether any rank got SIGTERM/SIGINT (all ranks agree, so they checkpoint the same step)."""
        if not self.ranks.distributed:
            return bool(stop)
        flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def heartbeat_record(self, losses: list[torch.Tensor], seconds: float) -> dict[str, Any]:
        loss = _mean_over_ranks(torch.stack(losses).float(), self.ranks).tolist()
        tokens = len(losses) * self.cfg.train.batch_size * self.cfg.data.seq_len * self.ranks.world
        return {"kind": "train", "step": self.step, "loss": sum(loss) / len(loss), "losses": loss,
                "lr": learning_rate(self.step - 1, self.cfg), "tokens_per_s": tokens / max(seconds, 1e-9),
                "tokens": self.step * self.cfg.train.batch_size * self.cfg.data.seq_len * self.ranks.world,
                "time": time.time(), "memory": memory_stats(self.device),
                "gate_means": self.gates.means(), "gate_histograms": self.gates.histograms()}

    def run(self) -> dict[str, Any]:
        cfg, rank = self.cfg, self.ranks.rank
        beats = Heartbeat(self.run_dir / "heartbeat.jsonl") if rank == 0 else None
        stacks = (self.run_dir / f"stacks-rank-{rank}.txt").open("a")
        install_stack_dump(stacks)
        watchdog = Watchdog(cfg.ops.watchdog_s, stacks).start() if cfg.ops.watchdog_s > 0 else None
        stop = StopFlag()
        start = self.step
        history: list[list[float]] = []
        if beats is not None:
            beats.write({"kind": "start", "step": self.step, "resumed_from": self.resumed_from,
                         "parameters": parameter_count(self.model), "world": self.ranks.world,
                         "device": str(self.device), "pid": os.getpid(), "config": cfg.to_dict()})
        bar = tqdm(total=cfg.train.steps, initial=self.step, disable=not (cfg.ops.progress and rank == 0),
                   dynamic_ncols=True)
        stopped_by = None
        pending: list[torch.Tensor] = []
        since = time.perf_counter()
        try:
            while self.step < cfg.train.steps:
                pending.append(self.train_step())
                bar.update(1)
                if watchdog is not None:
                    watchdog.beat()
                last = self.step == cfg.train.steps
                if self.step % cfg.ops.heartbeat_every == 0 or last:
                    record = self.heartbeat_record(pending, time.perf_counter() - since)
                    history += [[self.step - len(pending) + 1 + i, v] for i, v in enumerate(record["losses"])]
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                    if beats is not None:
                        beats.write(record)
                    pending, since = [], time.perf_counter()
                if self.step % cfg.train.eval_every == 0 or last:
                    val = self.evaluate()
                    if beats is not None:
                        beats.write({"kind": "eval", "step": self.step, "val_loss": val, "time": time.time()})
                    if watchdog is not None:
                        watchdog.beat()
                if self._stop_requested(stop):
                    stopped_by = signal.Signals(stop.signal).name if stop else "peer"
                    self.save()
                    break
                if cfg.ops.stop_after and self.step - start == cfg.ops.stop_after and not last:
                    stopped_by = "ops.stop_after"
                    self.save()
                    break
                if self.step % cfg.ops.checkpoint_every == 0 or last:
                    self.save()
                    if watchdog is not None:
                        watchdog.beat()
        finally:
            bar.close()
            stop.restore()
            if watchdog is not None:
                watchdog.stop()
        if pending:
            tail = _mean_over_ranks(torch.stack(pending).float(), self.ranks).tolist()
            history += [[self.step - len(pending) + 1 + i, v] for i, v in enumerate(tail)]
        summary = {"rank": rank, "world": self.ranks.world, "start_step": start, "end_step": self.step,
                   "losses": history, "stopped_by": stopped_by, "resumed_from": self.resumed_from,
                   "param_checksum": float(sum(p.detach().double().sum() for p in self.model.parameters()))}
        (self.run_dir / f"summary-rank-{rank}.json").write_text(json.dumps(summary))
        if beats is not None:
            beats.write({"kind": "end", **summary})
            beats.close()
        stacks.close()
        return summary


def train(cfg: RunConfig) -> dict[str, Any]:
    """Train (or resume) the run `cfg` describes; returns this rank's summary."""
    return Trainer(cfg).run()
