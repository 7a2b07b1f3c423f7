"""Plots from runs: `python examples/train/plot.py --runs RUN_DIR ... --needle RESULT.json ... --out DIR`.

Writes loss.png (train and validation loss of every run against tokens), gates.png (per-branch
gate means of NSA runs, averaged over layers, against steps), gate-histograms.png (the last
heartbeat's gate histograms of each NSA run) and needle.png (accuracy against length, one line
per run, averaged over depths).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

BRANCHES = ("cmp", "slc", "win")


def records(run: Path) -> list[dict]:
    lines = (run / "heartbeat.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def label(run: Path, rows: list[dict]) -> str:
    starts = [r for r in rows if r["kind"] == "start"]
    return f"{run.name} ({starts[0]['config']['model']['attention']})" if starts else run.name


def plot_losses(runs: list[Path], out: Path) -> None:
    figure, axis = plt.subplots(figsize=(7, 4))
    for run in runs:
        rows = records(run)
        start = next(r for r in rows if r["kind"] == "start")
        config = start["config"]
        per_step = config["train"]["batch_size"] * config["data"]["seq_len"] * start["world"]
        train = [r for r in rows if r["kind"] == "train"]
        evals = [r for r in rows if r["kind"] == "eval"]
        axis.plot([r["tokens"] for r in train], [r["loss"] for r in train], alpha=0.4,
                  label=f"{label(run, rows)} train")
        axis.plot([r["step"] * per_step for r in evals], [r["val_loss"] for r in evals], marker="o",
                  label=f"{label(run, rows)} validation")
    axis.set(xlabel="tokens", ylabel="loss (nats/byte)")
    axis.legend(fontsize=7)
    figure.savefig(out / "loss.png", dpi=120, bbox_inches="tight")
    plt.close(figure)


def plot_gates(runs: list[Path], out: Path) -> None:
    nsa = [(run, [r for r in records(run) if r["kind"] == "train" and r["gate_means"]]) for run in runs]
    nsa = [(run, rows) for run, rows in nsa if rows]
    if not nsa:
        return
    figure, axis = plt.subplots(figsize=(7, 4))
    for run, rows in nsa:
        for b, branch in enumerate(BRANCHES):
            means = [sum(layer[b] for layer in r["gate_means"]) / len(r["gate_means"]) for r in rows]
            axis.plot([r["step"] for r in rows], means, label=f"{run.name} {branch}")
    axis.set(xlabel="step", ylabel="gate mean over layers", ylim=(0, 1))
    axis.legend(fontsize=7)
    figure.savefig(out / "gates.png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    figure, axes = plt.subplots(len(nsa), 3, figsize=(9, 2.5 * len(nsa)), squeeze=False)
    for row, (run, rows) in enumerate(nsa):
        last = rows[-1]["gate_histograms"]
        for b, branch in enumerate(BRANCHES):
            counts = [sum(layer[b][i] for layer in last) for i in range(len(last[0][b]))]
            edges = [i / len(counts) for i in range(len(counts))]
            axes[row][b].bar(edges, counts, width=1 / len(counts), align="edge")
            axes[row][b].set(title=f"{run.name} {branch} @ step {rows[-1]['step']}", xlim=(0, 1))
    figure.tight_layout()
    figure.savefig(out / "gate-histograms.png", dpi=120)
    plt.close(figure)


def plot_needle(results: list[Path], out: Path) -> None:
    figure, axis = plt.subplots(figsize=(6, 4))
    for path in results:
        result = json.loads(path.read_text())
        lengths = sorted({r["length"] for r in result["needle"]})
        accuracy = [sum(r["accuracy"] for r in result["needle"] if r["length"] == n)
                    / sum(1 for r in result["needle"] if r["length"] == n) for n in lengths]
        name = f"{Path(result['run_dir']).name} ({result['attention']})"
        axis.plot(lengths, accuracy, marker="o", label=name)
    axis.set(xscale="log", xlabel="context length", ylabel="needle accuracy", ylim=(0, 1.05))
    axis.legend(fontsize=7)
    figure.savefig(out / "needle.png", dpi=120, bbox_inches="tight")
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="*", default=[])
    parser.add_argument("--needle", type=Path, nargs="*", default=[], help="evaluate.py JSON files")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.runs:
        plot_losses(args.runs, args.out)
        plot_gates(args.runs, args.out)
    if args.needle:
        plot_needle(args.needle, args.out)


if __name__ == "__main__":
    main()
