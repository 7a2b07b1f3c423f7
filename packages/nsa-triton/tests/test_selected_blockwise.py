"""The block-by-block selected forward against the float64 reference: group sizes 1..8, several
batch rows, token chunks and pieces of a block's list (both forced small), -1 padded indices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nsa_spec import NSAConfig
from nsa_spec.reference.select import selected_attention as ref_selected
from nsa_triton.ops import select, selected_blockwise
from test_ops import CFG, DEVICE, close, float32_values, make_inputs, to_torch


def random_indices(rng, T, H, n, l_slc):
    """Per (token, kv head) 1..n distinct blocks <= the token's own, ascending, -1 padded."""
    idx = np.full((T, H, n), -1)
    for t in range(T):
        for h in range(H):
            c = t // l_slc
            picked = np.sort(rng.choice(c + 1, size=rng.integers(1, min(c + 1, n) + 1), replace=False))
            idx[t, h, : picked.size] = picked
    return idx


@pytest.mark.parametrize(("B", "HQ", "H", "chunk"),
                         [(2, 2, 2, 32), (1, 4, 2, None), (1, 8, 2, 50), (2, 8, 1, 80)])
def test_blockwise_matches_reference(monkeypatch, B, HQ, H, chunk):
    monkeypatch.setattr(selected_blockwise, "PIECE_TOKENS", 4)  # several pieces per block list
    T, dk, dv = 80, 8, 16
    rng = np.random.default_rng(HQ * 10 + H)
    inputs = float32_values(make_inputs(rng, B, T, HQ, H, dk, dv))
    idx = np.stack([random_indices(rng, T, H, CFG.top_n, CFG.slc_len) for _ in range(B)])
    a = to_torch(inputs)
    indices = torch.from_numpy(idx).to(DEVICE, torch.int32)
    runs = []
    for _ in range(2):
        o = torch.full((B, T, HQ, dv), float("nan"), dtype=torch.float32, device=DEVICE)
        lse = torch.full((B, T, HQ), float("nan"), dtype=torch.float32, device=DEVICE)
        selected_blockwise.selected_attention_blockwise(a.q, a.k_slc, a.v_slc, indices, o, lse, CFG,
                                                        CFG.softmax_scale(dk), chunk=chunk)
        runs.append((o, lse))
    for b in range(B):
        o_ref, lse_ref = ref_selected(inputs.q[b], inputs.k_slc[b], inputs.v_slc[b], idx[b], CFG, np)
        close(runs[0][0][b], o_ref)
        close(runs[0][1][b], lse_ref)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])  # deterministic


def test_chunk_tokens_bounds_the_partials():
    n, HQ, dv = 16, 64, 128
    chunk = selected_blockwise.chunk_tokens(131072, n, HQ, dv, 2)
    assert chunk * n * HQ * dv * 2 <= selected_blockwise.PARTIAL_BYTES
    assert selected_blockwise.chunk_tokens(100, n, HQ, dv, 2) == 100


@pytest.mark.parametrize(("B", "HQ", "H", "chunk"), [(2, 2, 2, 32), (1, 8, 2, None), (1, 4, 1, 50)])
def test_blockwise_dq_equals_tokenwise(monkeypatch, B, HQ, H, chunk):
    """dq block by block equals the token-by-token kernel's (float32; both against the oracle in
    test_backward_select / the suite), and two runs are bitwise equal."""
    monkeypatch.setattr(selected_blockwise, "PIECE_TOKENS", 4)
    T, dk, dv = 80, 8, 16
    rng = np.random.default_rng(HQ + H)
    inputs = float32_values(make_inputs(rng, B, T, HQ, H, dk, dv))
    idx = np.stack([random_indices(rng, T, H, CFG.top_n, CFG.slc_len) for _ in range(B)])
    a = to_torch(inputs)
    indices = torch.from_numpy(idx).to(DEVICE, torch.int32)
    scale = CFG.softmax_scale(dk)
    o = torch.empty((B, T, HQ, dv), dtype=torch.float32, device=DEVICE)
    lse = torch.empty((B, T, HQ), dtype=torch.float32, device=DEVICE)
    select.selected_attention(a.q, a.k_slc, a.v_slc, indices, o, lse, CFG, scale)
    grad_o = torch.from_numpy(rng.standard_normal((B, T, HQ, dv))).to(DEVICE, torch.float32)
    gate = torch.from_numpy(rng.uniform(size=(B, T, HQ))).to(DEVICE, torch.float32)
    delta = (gate[..., None] * grad_o * o).sum(-1)
    args = (a.q, a.k_slc, a.v_slc, indices, grad_o, gate, lse, delta)
    want = torch.zeros((B, T, HQ, dk), dtype=torch.float32, device=DEVICE)
    select.selected_dq(*args, want, CFG, scale)
    runs = []
    for _ in range(2):
        dq = torch.zeros_like(want)
        selected_blockwise.selected_dq_blockwise(*args, dq, CFG, scale, chunk=chunk)
        runs.append(dq)
    np.testing.assert_allclose(runs[0].cpu().numpy(), want.cpu().numpy(), rtol=1e-5, atol=1e-5)
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize(("HQ", "H", "forward", "dq"), [
    (8, 8, "blocks", "blocks"), (8, 2, "blocks", "tokens"), (16, 2, "blocks", "tokens"),
    (16, 1, "tokens", "tokens"),
])
def test_policy_picks_the_measured_strategy(monkeypatch, HQ, H, forward, dq):
    """G <= BLOCKWISE_MAX_GROUP (8) runs the forward block by block, G <= BLOCKWISE_DQ_MAX_GROUP (2)
    the dq; larger groups token by token (the H200 measurements in nsa.py)."""
    from nsa_triton.ops import nsa

    used = []
    monkeypatch.setattr(nsa, "selected_attention_blockwise", lambda *a: used.append("blocks"))
    monkeypatch.setattr(nsa, "selected_attention", lambda *a: used.append("tokens"))
    q, k = torch.zeros(1, 4, HQ, 8), torch.zeros(1, 4, H, 8)
    nsa.selected_forward(q, k, k, None, None, None, CFG, 1.0)
    assert used == [forward]
    assert nsa._blockwise(q, k, k, CFG, nsa.BLOCKWISE_DQ_MAX_GROUP) == (dq == "blocks")


def test_wide_rows_and_long_blocks_take_the_token_kernels():
    """Rows past MAX_ROW_BYTES (bf16 dk = dv = 256, float32 dk = dv = 128) or blocks past MAX_BLOCK
    keys would not fit the block-by-block tiles' shared memory: those run token by token."""
    assert selected_blockwise.supports(CFG, 128, 128, 2) and selected_blockwise.supports(CFG, 64, 64, 4)
    assert not selected_blockwise.supports(CFG, 256, 256, 2)
    assert not selected_blockwise.supports(CFG, 128, 128, 4)
    long_blocks = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=128, top_n=4)
    assert not selected_blockwise.supports(long_blocks, 64, 64, 2)
