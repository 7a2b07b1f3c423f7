"""Command line: `python -m bench {list,run,plot,threshold}` (bench/README.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nsa_spec.config import NSAConfig

from bench import results, workloads

SMOKE = {"seqlens": [96, 200], "batches": [1, 2], "selected": [32, 64], "heads_q": 16, "heads_kv": 1,
         "head_dim": 32}
SMOKE_CONFIG = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=16, top_n=4, window=32)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="workloads and their default cases")

    r = sub.add_parser("run", help="gate, time and record workloads")
    r.add_argument("workloads", nargs="+", choices=sorted(workloads.WORKLOADS))
    r.add_argument("--backend", nargs="+", required=True,
                   help="NSA backends (torch, numpy, ...), sdpa-cudnn, sdpa-flash, sdpa-math, flash-attn, "
                        "fla-nsa, flash-nsa")
    r.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    r.add_argument("--seqlens", type=_ints, help="T (prefill, selection) or S (decode), e.g. 8192,16384")
    r.add_argument("--batches", type=_ints, help="decode batch sizes")
    r.add_argument("--groups", type=_ints, help="group sizes G (prefill-groups)")
    r.add_argument("--selected", type=_ints, help="tokens selected per query L (selection)")
    r.add_argument("--modes", type=lambda s: s.split(","), help="e.g. fwd or fwd,fwdbwd")
    r.add_argument("--heads-q", type=int)
    r.add_argument("--heads-kv", type=int)
    r.add_argument("--head-dim", type=int)
    r.add_argument("--dtype", choices=sorted(workloads.ITEMSIZE))
    r.add_argument("--budget-s", type=float, default=60.0, help="time budget of one case (seconds)")
    r.add_argument("--out", type=Path, help="results folder (default bench/results)")
    r.add_argument("--smoke", action="store_true",
                   help="tiny sizes and blocks (l=8 d=4 l'=16 n=4 w=32) to check the runner on a CPU")

    pl = sub.add_parser("plot", help="speedup-over-dense PNGs beside results CSVs")
    pl.add_argument("paths", nargs="*", type=Path, default=[results.RESULTS_DIR])

    t = sub.add_parser("threshold", help="selection length threshold report (Markdown)")
    t.add_argument("csvs", nargs="+", type=Path, help="selection results CSVs")
    t.add_argument("--candidate", required=True, help="backend whose selection path should win")
    t.add_argument("--baseline", required=True, help="backend it must beat")
    t.add_argument("--margin", type=float, default=1.2)
    t.add_argument("--out", type=Path, help="report path (default beside the first CSV)")
    return p


def _overrides(a: argparse.Namespace) -> workloads.Overrides:
    smoke = SMOKE if a.smoke else {}
    pick = {k: getattr(a, k) if getattr(a, k) is not None else smoke.get(k)
            for k in ("seqlens", "batches", "groups", "selected", "heads_q", "heads_kv", "head_dim")}
    return workloads.Overrides(**pick, modes=a.modes, dtype=a.dtype,
                               config=SMOKE_CONFIG if a.smoke else None)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    a = _parser().parse_args(argv)
    if a.command == "list":
        for w in workloads.WORKLOADS.values():
            print(f"{w.name}: {w.description}")
            for case in w.cases():
                print(f"    {case.case_id}  ideal {case.ideal_speedup():.1f}x ({case.ideal_basis})")
        return 0
    if a.command == "run":
        from bench.runner import run

        out = run(a.workloads, a.backend, a.device, _overrides(a), a.budget_s, a.out)
        print(results.table([r for rows in out.values() for r in rows]))
        return 0
    if a.command == "plot":
        from bench.plot import plot_all

        for png in plot_all(a.paths):
            print(png)
        return 0
    from bench.threshold import write_report

    out = a.out or a.csvs[0].parent / f"selection-threshold-{a.candidate}-vs-{a.baseline}.md"
    print(write_report(a.csvs, a.candidate, a.baseline, a.margin, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
