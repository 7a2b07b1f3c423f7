"""`python -m bench threshold`: from `selection` results, the number of selected tokens L from
which one backend's selection path beats another by a margin.

For each sequence length T, the ratio baseline_time / candidate_time is taken at every L both
timed; the recommended threshold is the smallest L such that the ratio is >= margin at that L
and at every larger L measured (so a single lucky size does not set it). If the largest L
misses the margin there is no threshold.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Point:
    """One L at one T: both times and their ratio."""

    selected: int
    candidate_ms: float
    baseline_ms: float

    @property
    def ratio(self) -> float:
        """baseline / candidate: > 1 means the candidate is faster."""
        return self.baseline_ms / self.candidate_ms


def points(rows: Iterable[dict[str, Any]], candidate: str, baseline: str) -> dict[int, list[Point]]:
    """Timed selection rows of both backends matched by (T, L, shape); points by T, L ascending."""
    times: dict[str, dict[tuple[Any, ...], float]] = {candidate: {}, baseline: {}}
    for r in rows:
        if r["workload"] == "selection" and r["status"] == "ok" and r["backend"] in times:
            times[r["backend"]][(r["seqlen"], r["selected"], r["case_id"])] = r["time_ms"]
    by_t: dict[int, list[Point]] = defaultdict(list)
    for key in sorted(set(times[candidate]) & set(times[baseline])):
        by_t[key[0]].append(Point(key[1], times[candidate][key], times[baseline][key]))
    return dict(by_t)


def threshold(series: list[Point], margin: float) -> int | None:
    """Smallest L from which the ratio stays >= margin up to the largest L; None if none."""
    best = None
    for p in sorted(series, key=lambda p: p.selected, reverse=True):
        if p.ratio < margin:
            break
        best = p.selected
    return best


def report(rows: Iterable[dict[str, Any]], candidate: str, baseline: str, margin: float,
           source: str = "") -> str:
    """The Markdown report: one table and one recommendation per T."""
    lines = [f"# Selection threshold: {candidate} vs {baseline}", ""]
    if source:
        lines += [f"Source: {source}", ""]
    lines += [
        f"Ratio = {baseline} time / {candidate} time; margin {margin:g}x. The threshold is the "
        "smallest L from which the ratio stays at or above the margin for every larger L measured.",
        "",
    ]
    found = points(rows, candidate, baseline)
    if not found:
        return "\n".join([*lines, f"No selection size was timed for both {candidate} and {baseline}.", ""])
    for T, series in sorted(found.items()):
        lines += [f"## T = {T}", "", f"| L | {candidate} ms | {baseline} ms | ratio | >= {margin:g}x |",
                  "|---|---|---|---|---|"]
        for p in series:
            lines.append(f"| {p.selected} | {p.candidate_ms:.3f} | {p.baseline_ms:.3f} | {p.ratio:.2f} | "
                         f"{'yes' if p.ratio >= margin else 'no'} |")
        L = threshold(series, margin)
        verdict = (f"**Use {candidate} for L >= {L}** (ratio >= {margin:g}x from there on)." if L is not None
                   else f"**No threshold**: {candidate} does not beat {baseline} by {margin:g}x at the "
                        f"largest L measured.")
        lines += ["", verdict, ""]
    return "\n".join(lines)


def write_report(csvs: list[Path], candidate: str, baseline: str, margin: float, out: Path) -> Path:
    """Read the CSVs, write the report to `out`, return its path."""
    from bench.results import read_csv

    rows = [r for p in csvs for r in read_csv(p)]
    out.write_text(report(rows, candidate, baseline, margin, ", ".join(p.name for p in csvs)))
    return out
