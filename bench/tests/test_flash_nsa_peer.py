"""The flash-nsa target on the CPU: clear skip reasons when its source is missing, fails to import
or no GPU is there, and (when `.peers/flash-nsa` is carried) that the window stubs replace the
names its autograd function calls."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from bench import flash_nsa_peer, runner, targets, workloads

CASES = workloads.get("prefill-paper").cases(
    workloads.Overrides(seqlens=[256], heads_q=16, heads_kv=1, head_dim=32, dtype="bfloat16")
)
HAS_TORCH_TRITON = all(importlib.util.find_spec(m) is not None for m in ("torch", "triton"))


def _broken_tree(root, message):
    entry = root / "flash_nsa" / "modules"
    entry.mkdir(parents=True)
    (entry / "megatron_level_nsa.py").write_text(f"raise ImportError({message!r})\n")


def test_missing_source_is_a_skip_reason(tmp_path, monkeypatch):
    monkeypatch.setenv(flash_nsa_peer.ENV_PATH, str(tmp_path))
    t = targets.get("flash-nsa")
    why = t.unsupported(CASES[0], "cuda")
    assert why.startswith("flash-nsa source not found") and "scripts/carry-flash-nsa.sh" in why
    rows = runner.run(["prefill-paper"], ["flash-nsa"], "cpu",
                      workloads.Overrides(seqlens=[256], heads_q=16, heads_kv=1, head_dim=32), 5,
                      tmp_path / "out")["prefill-paper"]
    assert {r["mode"] for r in rows} == {"fwd", "fwdbwd"}
    assert {r["status"] for r in rows} == {"skipped"} and all("source not found" in r["reason"] for r in rows)
    assert {r["w"] for r in rows} == {0}


def test_failed_import_is_a_skip_reason(tmp_path, monkeypatch):
    _broken_tree(tmp_path, "no module named flash_attn_2_cuda")
    monkeypatch.setenv(flash_nsa_peer.ENV_PATH, str(tmp_path))
    t = targets.get("flash-nsa")
    assert t.unsupported(CASES[0], "cpu") == "flash-nsa needs a CUDA device"
    why = t.unsupported(CASES[0], "cuda")
    assert why.startswith(f"flash-nsa failed to import from {tmp_path}: ImportError: no module named flash_")
    assert not any(n == "flash_nsa" or n.startswith("flash_nsa.") for n in sys.modules)


@pytest.mark.skipif(flash_nsa_peer.missing_reason(flash_nsa_peer.CARRIED) is not None or not HAS_TORCH_TRITON,
                    reason="needs .peers/flash-nsa (bash scripts/carry-flash-nsa.sh), torch and triton")
def test_carried_source_loads_with_the_window_stubbed(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))  # read at its import
    try:
        m = flash_nsa_peer.load(flash_nsa_peer.CARRIED)
        assert m.NSAFunction.forward.__globals__["swa_fwd"] is flash_nsa_peer.window_forward_stub
        assert m.NSAFunction.backward.__globals__["swa_bwd"] is flash_nsa_peer.window_backward_stub
        assert m.NSAHelper.is_triton34()
        q, k, v = torch.randn(10, 8, 16), torch.randn(10, 2, 16), torch.randn(10, 2, 32)
        o, lse = m.swa_fwd(q, k, v, sm_scale=0.25)
        assert o.shape == (10, 8, 32) and lse.shape == (8, 10) and not o.any()
        grads = m.swa_bwd(q, k, v, o, lse, o, sm_scale=0.25)
        assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]
        flash_nsa_peer.configure(m, 32, 16, 64, 16, 512, torch.tensor([0, 200, 300], dtype=torch.int32))
        h = m.NSAHelper
        assert (h.kernel_size, h.stride, h.block_size, h.top_n, h.window_size) == (32, 16, 64, 16, 512)
        assert h.y_cu_seqlens.tolist() == [0, 11, 16] and h.k_cu_seqlens.tolist() == [0, 4, 6]
    finally:
        for name in [n for n in sys.modules if n == "flash_nsa" or n.startswith("flash_nsa.")]:
            del sys.modules[name]
