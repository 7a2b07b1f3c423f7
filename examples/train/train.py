"""Train the example LM: `python examples/train/train.py --config CONFIG [--set section.key=value ...]`.

Several processes: `torchrun --nproc-per-node N examples/train/train.py ...` (DDP; gloo on the CPU).
"""

from __future__ import annotations

import argparse

import torch.distributed as dist
from nsa_train.config import load_config
from nsa_train.loop import train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML file (configs/default.yaml, configs/tiny.yaml, ...)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one value (parsed as YAML); repeatable")
    args = parser.parse_args(argv)
    try:
        train(load_config(args.config, args.set))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
