"""Evaluate a run: `python examples/train/evaluate.py RUN_DIR [--needle-lengths 8192,16384] [--out FILE]`.

Prints and writes JSON: the step, the validation loss (--val-batches) and needle accuracy per
length and depth of the run's latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from nsa_train.evaluate import evaluate


def numbers(kind: type):
    return lambda text: [kind(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--needle-lengths", type=numbers(int), default=[])
    parser.add_argument("--depths", type=numbers(float), default=[0.1, 0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--samples", type=int, default=20, help="needle samples per (length, depth)")
    parser.add_argument("--val-batches", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="write the JSON here too")
    args = parser.parse_args(argv)
    result = evaluate(args.run_dir, args.needle_lengths, args.depths, args.samples, args.val_batches,
                      torch.device(args.device))
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
