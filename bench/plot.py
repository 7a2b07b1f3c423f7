"""`python -m bench plot`: speedup over the best dense baseline vs T (prefill) or S (decode).

One PNG per results CSV, written beside it: a panel per mode (per batch for decode), one line
per timed backend, and the model's ideal speedup (FLOP ratio for prefill, byte ratio for decode)
dashed. Dense baselines appear relative to the best of them.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import results


def _panels(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    panels: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["mode"] == "decode":
            key = f"decode, batch {r['batch']}"
        elif r["workload"] == "prefill-groups":
            key = f"{r['mode']}, G={r['group_size']}"
        elif r["mode"] == "selection":
            key = f"selection, T={r['seqlen']}"
        else:
            key = r["mode"]
        panels[key].append(r)
    return dict(panels)


def plot_csv(csv_path: Path) -> Path | None:
    """Draw the speedup plot of one results CSV; None when it holds no timed NSA row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results.read_csv(csv_path)
    timed = [r for r in rows if r["status"] == "ok" and r["speedup_vs_dense"] is not None]
    if not timed:
        return None
    panels = _panels(rows)
    names = sorted({r["backend"] for r in timed})
    colors = {name: f"C{i % 10}" for i, name in enumerate(names)}  # one color per backend everywhere
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    xname = "selected tokens L" if rows[0]["mode"] == "selection" else (
        "cache length S" if rows[0]["mode"] == "decode" else "sequence length T")
    for ax, (title, panel) in zip(axes[0], panels.items(), strict=True):
        xs = "selected" if rows[0]["mode"] == "selection" else "seqlen"
        ideal = sorted({(r[xs], r["ideal_speedup"]) for r in panel})
        ax.plot([x for x, _ in ideal], [y for _, y in ideal], "k--", lw=1,
                label=f"ideal ({panel[0]['ideal_basis']} ratio)")
        by_backend: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for r in panel:
            if r["status"] == "ok" and r["speedup_vs_dense"] is not None:
                by_backend[r["backend"]].append((r[xs], r["speedup_vs_dense"]))
        for name, points in sorted(by_backend.items()):
            points.sort()
            ax.plot([x for x, _ in points], [y for _, y in points], "o-", ms=3, label=name,
                    color=colors[name])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xname, fontsize=8)
        ax.set_ylabel("speedup over best dense (time ratio)", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    legend = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="center right", fontsize=8)
    fig.suptitle(f"{csv_path.stem} on {csv_path.parent.name}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / fig.get_figwidth(), 1))
    png = csv_path.with_suffix(".png")
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def plot_all(paths: list[Path]) -> list[Path]:
    """Plot each results CSV given or under each folder given (other CSVs are left alone);
    return the PNGs written."""
    csvs = []
    for p in paths:
        csvs.extend(sorted(p.rglob("*.csv")) if p.is_dir() else [p])
    out = []
    for csv_path in filter(results.is_results_csv, csvs):
        png = plot_csv(csv_path)
        if png is not None:
            out.append(png)
    return out
