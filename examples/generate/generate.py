"""Generate greedily with a randomly initialised LM, NSA or dense attention: prefill, tokens/s.

    python examples/generate/generate.py --attention both --prompt-len 16384 --new-tokens 256 [--cuda-graph]

Prefills a random prompt of `--prompt-len` tokens into one preallocated cache per layer, generates
`--new-tokens` greedily (eager steps, or replays of one captured CUDA graph step with
`--cuda-graph`) after an untimed 3-token warm-up, prints the prefill time and decode tokens/s
and, with `--out`, writes them as JSON with the device and commit.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import torch
from nsa_generate.decoding import generate, nsa_backends, require_cuda
from nsa_spec.errors import UnsupportedError
from nsa_train.config import ModelConfig
from nsa_train.model import ATTENTIONS, LM, parameter_count

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Model flags: CLI name -> ModelConfig field (defaults are ModelConfig's).
SIZES = {"width": "width", "layers": "layers", "heads": "heads", "kv-heads": "kv_heads",
         "head-dim": "head_dim", "mlp-hidden": "mlp_hidden"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attention", choices=[*ATTENTIONS, "both"], default="both")
    parser.add_argument("--prompt-len", type=int, default=16384)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1, help="sequences decoded together")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="replay one captured decode step of the whole model (CUDA only)")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="auto: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--backend", default=None, help="NSA backend name (default: automatic dispatch)")
    defaults = ModelConfig()
    for flag, name in SIZES.items():
        parser.add_argument(f"--{flag}", type=int, default=getattr(defaults, name))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-warmup", action="store_true",
                        help="time the first generation (by default a 3-token one on the same prompt runs "
                             "first, so kernel compilation and autotuning are not timed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)
    args.device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else torch.device(args.device)
    if args.cuda_graph:
        try:
            require_cuda(args.device)
        except UnsupportedError as error:
            parser.error(str(error))
    args.dtype = DTYPES[args.dtype] if args.dtype != "auto" else \
        torch.bfloat16 if args.device.type == "cuda" else torch.float32
    return args


def commit() -> dict:
    """The checkout's commit and whether it has uncommitted changes (None outside git)."""
    def git(*cmd: str) -> str | None:
        try:
            return subprocess.run(["git", *cmd], cwd=Path(__file__).parent, capture_output=True,
                                  text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    status = git("status", "--porcelain")
    return {"sha": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def device_info(device: torch.device) -> dict:
    info = {"type": device.type, "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info.update(name=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    else:
        info.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


def run_one(args: argparse.Namespace, attention: str) -> dict:
    cfg = ModelConfig(attention=attention, backend=args.backend,
                      **{name: getattr(args, name) for name in SIZES.values()})
    torch.manual_seed(args.seed)
    model = LM(cfg).to(device=args.device, dtype=args.dtype).eval()
    prompt = torch.randint(0, model.head.out_features, (args.batch, args.prompt_len), device=args.device)
    if not args.no_warmup:
        generate(model, prompt, min(3, args.new_tokens), cuda_graph=args.cuda_graph)
    result = generate(model, prompt, args.new_tokens, cuda_graph=args.cuda_graph,
                      progress=not args.no_progress)
    return {"attention": attention, "cuda_graph": args.cuda_graph, "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens, "batch": args.batch, "warmup": not args.no_warmup,
            "parameters": parameter_count(model),
            "nsa_backends": nsa_backends(model, args.batch, args.prompt_len, args.new_tokens),
            "prefill_s": result.prefill_s, "capture_s": result.capture_s, "decode_s": result.decode_s,
            "decode_steps": result.decode_steps,
            "tokens_per_s": args.batch * result.decode_steps / result.decode_s,
            "ms_per_step": 1e3 * result.decode_s / result.decode_steps}


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    attentions = ATTENTIONS if args.attention == "both" else (args.attention,)
    runs = [run_one(args, attention) for attention in attentions]
    print(f"{'attention':>9} {'graph':>5} {'prompt':>7} {'batch':>5} {'prefill s':>9} {'ms/step':>8} "
          f"{'tokens/s':>9}")
    for r in runs:
        print(f"{r['attention']:>9} {r['cuda_graph']!s:>5} {r['prompt_len']:>7} {r['batch']:>5} "
              f"{r['prefill_s']:>9.3f} {r['ms_per_step']:>8.3f} {r['tokens_per_s']:>9.1f}")
    if args.out is not None:
        model = {f.name: getattr(args, f.name) for f in fields(ModelConfig) if f.name in SIZES.values()}
        meta = {"dtype": str(args.dtype).removeprefix("torch."), "backend": args.backend, "seed": args.seed,
                "model": model, "nsa": {k: v for k, v in asdict(ModelConfig()).items()
                                        if k in ("cmp_len", "cmp_stride", "slc_len", "top_n", "window",
                                                 "phi", "gate")}}
        record = {"device": device_info(args.device), "commit": commit(), "command": sys.argv, **meta,
                  "runs": runs}
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
