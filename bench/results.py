"""Result rows, the run's metadata, JSON + CSV files, and the short table printed last.

Files: bench/results/<gpu-slug>/<workload>-<YYYY-MM-DD>.{json,csv}. A second run of the same
workload on the same day merges into the files: its rows replace those with the same backend
and case id, other rows stay.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import platform
import re
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"

COLUMNS = (
    "workload", "mode", "case_id", "backend", "kind", "batch", "seqlen", "heads_q", "heads_kv",
    "group_size", "dk", "dv", "dtype", "l", "d", "l_slc", "n", "w", "selected", "status", "reason",
    "time_ms", "timer", "flops", "bytes", "tflops", "tbps", "dense_flops", "dense_bytes",
    "ideal_speedup", "ideal_basis", "speedup_vs_dense", "dense_ref", "note", "commit", "timestamp",
)
NUMERIC = {
    "batch", "seqlen", "heads_q", "heads_kv", "group_size", "dk", "dv", "l", "d", "l_slc", "n", "w",
    "selected", "time_ms", "flops", "bytes", "tflops", "tbps", "dense_flops", "dense_bytes",
    "ideal_speedup", "speedup_vs_dense",
}


def slug(name: str) -> str:
    """A folder name for a device: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def commit() -> str:
    """$NSA_BENCH_COMMIT when set (the device's copy of the tree may carry a stale .git), else the
    checked-out commit (with +dirty if bench/, packages/ or conformance/ changed)."""
    if os.environ.get("NSA_BENCH_COMMIT"):
        return os.environ["NSA_BENCH_COMMIT"]
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "bench", "packages", "conformance"],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("NSA_BENCH_COMMIT", "unknown")


def environment(device: str) -> dict[str, Any]:
    """Versions and the device name recorded with every run."""
    meta: dict[str, Any] = {"python": platform.python_version(), "device": device, "commit": commit()}
    try:
        import torch

        meta["torch"] = torch.__version__
        if device == "cuda":
            meta["gpu"] = torch.cuda.get_device_name()
            meta["cuda"] = torch.version.cuda
            meta["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    except ImportError:
        meta["torch"] = None
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    meta.setdefault("gpu", "cpu")
    return meta


def fill_speedups(rows: list[dict[str, Any]]) -> None:
    """Set speedup_vs_dense (best dense time / row time) and dense_ref on every timed row."""
    best: dict[tuple[str, str], tuple[float, str]] = {}
    for r in rows:
        if r["kind"] == "dense" and r["status"] == "ok":
            key = (r["workload"], r["case_id"])
            if key not in best or r["time_ms"] < best[key][0]:
                best[key] = (r["time_ms"], r["backend"])
    for r in rows:
        ref = best.get((r["workload"], r["case_id"]))
        if r["status"] == "ok" and ref is not None:
            r["speedup_vs_dense"] = ref[0] / r["time_ms"]
            r["dense_ref"] = ref[1]
        else:
            r["speedup_vs_dense"] = None
            r["dense_ref"] = ""


def _parse(value: str, column: str) -> Any:
    if value == "":
        return None
    if column in NUMERIC:
        number = float(value)
        return int(number) if number.is_integer() and column not in {"time_ms", "tflops", "tbps"} else number
    return value


def is_results_csv(path: Path) -> bool:
    """Whether `path` is a CSV this package wrote (its header is `COLUMNS`)."""
    with open(path, newline="") as f:
        return tuple(next(csv.reader(f), ())) == COLUMNS


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a results CSV, numbers parsed, empty cells as None."""
    with open(path, newline="") as f:
        return [{k: _parse(v, k) for k, v in row.items()} for row in csv.DictReader(f)]


def write_csv(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows with the fixed column order."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="raise")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r.get(k) is None else r[k] for k in COLUMNS})


def _merge(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    replaced = {(r["backend"], r["case_id"]) for r in new}
    return [r for r in old if (r["backend"], r["case_id"]) not in replaced] + new


def write(workload: str, rows: list[dict[str, Any]], meta: dict[str, Any], out_dir: Path | None = None,
          date: str | None = None) -> tuple[Path, Path]:
    """Write (merging with today's files) <dir>/<gpu>/<workload>-<date>.{json,csv}; return the paths.

    Rows replace earlier rows of the same backend and case; `meta` replaces an earlier run entry
    with the same "started" time (a run writes after each target, so an interrupted run keeps
    what it finished)."""
    folder = (out_dir or RESULTS_DIR) / slug(meta["gpu"])
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{workload}-{date or dt.date.today().isoformat()}"
    json_path, csv_path = folder / f"{stem}.json", folder / f"{stem}.csv"
    runs = []
    if json_path.exists():
        previous = json.loads(json_path.read_text())
        rows = _merge(previous["rows"], rows)
        runs = [r for r in previous["runs"] if r.get("started") != meta.get("started")]
    fill_speedups(rows)
    runs.append(meta)
    json_path.write_text(json.dumps({"workload": workload, "runs": runs, "rows": rows}, indent=1) + "\n")
    write_csv(csv_path, rows)
    return json_path, csv_path


def _size(r: dict[str, Any]) -> str:
    if r["mode"] == "decode":
        return f"B{r['batch']} S{r['seqlen']}"
    size = f"T{r['seqlen']}"
    if r.get("selected"):
        size += f" L{r['selected']}"
    if r["workload"] == "prefill-groups":
        size = f"G{r['group_size']} " + size
    return size


def _num(value: Any, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """A short fixed-width table: timed rows with rates and speedups, then one line per
    (workload, backend, status, reason) for the rows that were not timed."""
    head = ("workload", "backend", "mode", "size", "ms", "TFLOP/s", "TB/s", "vs dense", "ideal")
    lines = []
    untimed: dict[tuple[str, str, str, str], list[str]] = {}
    for r in rows:
        if r["status"] != "ok":
            key = (r["workload"], r["backend"], r["status"], r["reason"] or "")
            untimed.setdefault(key, []).append(f"{r['mode']} {_size(r)}")
            continue
        ideal = f"{r['ideal_speedup']:.1f}x {r['ideal_basis']}"
        vs = f"{r['speedup_vs_dense']:.2f}x" if r.get("speedup_vs_dense") is not None else ""
        lines.append((r["workload"], r["backend"], r["mode"], _size(r), _num(r["time_ms"], ".3f"),
                      _num(r["tflops"], ".3g"), _num(r["tbps"], ".3g"), vs, ideal))
    out = []
    if lines:
        widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        out = [fmt.format(*line).rstrip() for line in (head, *lines)]
    for (workload, backend, status, reason), sizes in untimed.items():
        out.append(f"{workload} {backend} {status} ({len(sizes)}: {', '.join(sizes)}): {reason}")
    return "\n".join(out)
