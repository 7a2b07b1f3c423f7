"""Operations around the training loop: heartbeat, watchdog, stack dumps, stop on SIGTERM.

- `Heartbeat`: one JSON object per line in run_dir/heartbeat.jsonl (rank 0).
- `Watchdog`: a daemon thread that dumps every thread's stack (faulthandler) to stderr and
  run_dir/stacks-rank<r>.txt when no step finished for `timeout_s`, once per stall.
- `install_stack_dump`: `kill -USR1 <pid>` dumps every thread's stack the same way.
- `StopFlag`: SIGTERM (and SIGINT) set a flag; the loop checkpoints after the current step and exits.
"""

from __future__ import annotations

import faulthandler
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import torch


def memory_stats(device: torch.device) -> dict[str, float]:
    """GiB: CUDA allocated / peak allocated / reserved, or this process's peak resident set on the CPU."""
    if device.type == "cuda":
        gib = 2.0**30
        return {"allocated_gib": torch.cuda.memory_allocated(device) / gib,
                "max_allocated_gib": torch.cuda.max_memory_allocated(device) / gib,
                "reserved_gib": torch.cuda.memory_reserved(device) / gib}
    import resource

    return {"max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2.0**20}


class Heartbeat:
    """Appends records to a JSONL file, flushed at once so a crash loses nothing written."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def dump_stacks(file: TextIO, reason: str) -> None:
    """Every thread's Python stack into `file` (and stderr), headed by `reason`."""
    for out in (sys.stderr, file):
        out.write(f"\n=== {reason} at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
        out.flush()
        faulthandler.dump_traceback(file=out, all_threads=True)
        out.flush()


class Watchdog:
    """Dumps every thread's stack when `beat()` was not called for `timeout_s` seconds."""

    def __init__(self, timeout_s: float, file: TextIO, poll_s: float | None = None) -> None:
        self.timeout_s, self.file = timeout_s, file
        self.poll_s = min(timeout_s / 4, 5.0) if poll_s is None else poll_s
        self.last = time.monotonic()
        self.dumped = False
        self.dumps = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True, name="watchdog")

    def start(self) -> Watchdog:
        self.thread.start()
        return self

    def beat(self) -> None:
        self.last, self.dumped = time.monotonic(), False

    def _watch(self) -> None:
        while not self.stopped.wait(self.poll_s):
            stalled = time.monotonic() - self.last
            if stalled > self.timeout_s and not self.dumped:
                dump_stacks(self.file, f"watchdog: no step finished for {stalled:.0f}s")
                self.dumped, self.dumps = True, self.dumps + 1

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


def install_stack_dump(file: TextIO) -> None:
    """SIGUSR1 dumps every thread's stack into `file` (faulthandler's handler: works mid-step too)."""
    faulthandler.register(signal.SIGUSR1, file=file, all_threads=True, chain=False)


class StopFlag:
    """Set by SIGTERM or SIGINT; the previous handlers come back with `restore()`."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal: int | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __bool__(self) -> bool:
        return self.signal is not None

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
