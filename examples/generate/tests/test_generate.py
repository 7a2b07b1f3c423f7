"""The generation example on the CPU: cached decoding equals re-running the whole prefix (NSA and
dense), the CLI end to end with its JSON, and `--cuda-graph` refused off CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nsa_generate.decoding import generate, generate_without_cache, make_caches
from nsa_spec.errors import InvalidInputError, UnsupportedError
from nsa_train.config import ModelConfig
from nsa_train.model import LM

EXAMPLE = Path(__file__).resolve().parents[1]
# Small NSA blocks so a 40-token prompt plus 12 steps emits compressed tokens, selects among
# several blocks and slides the window.
TINY = dict(width=32, layers=2, heads=4, kv_heads=2, head_dim=8, mlp_hidden=64, cmp_len=8,
            cmp_stride=4, slc_len=8, top_n=3, window=8)


def tiny_model(attention: str) -> LM:
    torch.manual_seed(0)
    # A larger init than training's so the logits are far from uniform and greedy ties are unlikely.
    return LM(ModelConfig(attention=attention, init_std=0.2, **TINY)).eval()


@pytest.mark.parametrize("attention", ["nsa", "dense"])
def test_cache_equals_full_prefix(attention):
    model = tiny_model(attention)
    prompt = torch.randint(0, model.head.out_features, (2, 40), generator=torch.Generator().manual_seed(1))
    cached = generate(model, prompt, 12)
    full = generate_without_cache(model, prompt, 12)
    assert torch.equal(cached.tokens, full.tokens)
    torch.testing.assert_close(cached.logits, full.logits)
    assert cached.decode_steps == 11


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(EXAMPLE / "generate.py"), *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_cli_writes_results(tmp_path):
    out = tmp_path / "results.json"
    run = run_cli("--attention", "both", "--prompt-len", "64", "--new-tokens", "6", "--device", "cpu",
                  "--width", "32", "--layers", "1", "--heads", "4", "--kv-heads", "2", "--head-dim", "8",
                  "--mlp-hidden", "64", "--out", str(out))
    assert run.returncode == 0, run.stderr
    results = json.loads(out.read_text())
    assert [r["attention"] for r in results["runs"]] == ["nsa", "dense"]
    for r in results["runs"]:
        assert r["prompt_len"] == 64 and r["new_tokens"] == 6 and r["cuda_graph"] is False
        assert r["decode_steps"] == 5 and r["tokens_per_s"] > 0 and r["prefill_s"] > 0
    assert set(results["runs"][0]["nsa_backends"]) == {"forward", "decode"}
    assert results["runs"][1]["nsa_backends"] == {}
    assert results["device"]["type"] == "cpu" and "commit" in results
    assert "tokens/s" in run.stdout


def test_cuda_graph_refused_on_cpu():
    with pytest.raises(UnsupportedError, match="--cuda-graph needs a CUDA device"):
        generate(tiny_model("dense"), torch.zeros(1, 8, dtype=torch.long), 4, cuda_graph=True)
    run = run_cli("--cuda-graph", "--device", "cpu", "--prompt-len", "16", "--new-tokens", "4")
    assert run.returncode == 2
    assert "--cuda-graph needs a CUDA device: device='cpu'" in run.stderr


def test_caches_are_fixed_and_one_per_block():
    model = tiny_model("dense")
    prompt = torch.zeros(1, 6, dtype=torch.long)
    caches = make_caches(model, 7)
    with torch.inference_mode():
        model(prompt, caches=caches)
        model(prompt[:, :1], caches=caches)
        with pytest.raises(InvalidInputError, match="a sequence needs 8 tokens but capacity=7"):
            model(prompt[:, :1], caches=caches)
        with pytest.raises(InvalidInputError, match=r"one cache per block: len\(caches\)=1, layers=2"):
            model(prompt, caches=caches[:1])
