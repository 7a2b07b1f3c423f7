"""The kernels against the float64 reference at small shapes (the full check is the conformance
suite). On CPU they run under Triton's interpreter (conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nsa_spec import InvalidInputError, NSAConfig, NSAInputs, NSAOutput
from nsa_spec import reference as ref
from nsa_spec.blocks import n_slc_blocks
from nsa_spec.reference.compress import compressed_attention as ref_compressed
from nsa_spec.reference.select import importance_scores as ref_scores
from nsa_spec.reference.select import selected_attention as ref_selected
from nsa_torch.ops.select import top_n
from nsa_triton.backend import TritonBackend
from nsa_triton.ops import compress, nsa, select

CFG = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=16, top_n=4, window=24)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(rng, B, T, HQ, H, dk, dv, config=CFG, cu_seqlens=None):
    raw = {
        "q": rng.standard_normal((B, T, HQ, dk)),
        "k_raw": rng.standard_normal((B, T, H, dk)), "v_raw": rng.standard_normal((B, T, H, dv)),
        "k_slc": rng.standard_normal((B, T, H, dk)), "v_slc": rng.standard_normal((B, T, H, dv)),
        "k_win": rng.standard_normal((B, T, H, dk)), "v_win": rng.standard_normal((B, T, H, dv)),
        "gates": rng.uniform(size=(B, T, HQ, 3)),
    }
    return ref.compress_inputs(**raw, config=config, cu_seqlens=cu_seqlens)


def float32_values(inputs: NSAInputs) -> NSAInputs:
    """The inputs rounded to float32 (what the kernels see), kept float64 for the oracle."""
    return inputs.replace(**{n: x.astype(np.float32).astype(np.float64) for n, x in inputs.arrays().items()})


def to_torch(inputs: NSAInputs) -> NSAInputs:
    arrays = {n: torch.from_numpy(x).to(DEVICE, torch.float32) for n, x in inputs.arrays().items()}
    return inputs.replace(**arrays)


def close(got: torch.Tensor, want: np.ndarray) -> None:
    np.testing.assert_allclose(got.double().cpu().numpy(), want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(
    ("B", "T", "HQ", "H", "dk", "dv", "config"),
    [(2, 101, 4, 2, 8, 6, CFG), (1, 7, 2, 1, 4, 4, CFG), (1, 130, 6, 2, 16, 32, CFG),
     (1, 150, 4, 1, 8, 8, NSAConfig(cmp_len=4, cmp_stride=4, slc_len=8, top_n=3, window=5))],
)
def test_forward_matches_reference(B, T, HQ, H, dk, dv, config):
    """Float32 inputs (IEEE products): indices exact, o and lse to float32 rounding."""
    inputs = make_inputs(np.random.default_rng(T), B, T, HQ, H, dk, dv, config)
    inputs = float32_values(inputs)
    want = ref.nsa_attention(inputs, config)
    got = nsa.nsa_attention(to_torch(inputs), config)
    np.testing.assert_array_equal(got.indices.cpu().numpy(), want.indices)
    close(got.o, want.o)
    finite = np.isfinite(want.lse)
    np.testing.assert_array_equal(np.isfinite(got.lse.cpu().numpy()), finite)
    close(got.lse[torch.from_numpy(finite)], want.lse[finite])


def test_importance_scores_match_reference():
    """Group-summed, overlap-mapped block scores equal Eqs. 9-10 of the reference."""
    T, HQ, H, dk = 90, 4, 2, 8
    inputs = make_inputs(np.random.default_rng(5), 1, T, HQ, H, dk, dk)
    o_ref, _, p_ref = ref_compressed(inputs.q[0], inputs.k_cmp[0], inputs.v_cmp[0], CFG, np)
    want = ref_scores(np.asarray(p_ref), n_slc_blocks(T, CFG), CFG)
    a = to_torch(inputs)
    o = torch.empty((1, T, HQ, dk), dtype=torch.float32, device=DEVICE)
    lse = torch.empty((1, T, HQ), dtype=torch.float32, device=DEVICE)
    scale = CFG.softmax_scale(dk)
    compress.compressed_attention(a.q, a.k_cmp, a.v_cmp, o, lse, CFG, scale)
    close(o[0], o_ref)
    got = compress.importance_scores(a.q, a.k_cmp, lse, n_slc_blocks(T, CFG), CFG, scale)
    close(got[0], want)


MANY_BLOCKS = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=8, top_n=16)  # 38 blocks at T = 300: 3 chunks


@pytest.mark.parametrize(
    ("B", "T", "HQ", "H", "config", "zero_q", "dtype"),
    [(2, 200, 4, 2, CFG, False, torch.float32), (1, 200, 4, 2, CFG, True, torch.float32),
     (1, 150, 2, 2, NSAConfig(cmp_len=4, cmp_stride=2, slc_len=8, top_n=5), True, torch.float32),
     (1, 300, 8, 1, MANY_BLOCKS, False, torch.float32), (1, 300, 8, 1, MANY_BLOCKS, True, torch.float32),
     (1, 200, 4, 2, CFG, False, torch.bfloat16)],
)
def test_running_top_n_equals_two_pass(B, T, HQ, H, config, zero_q, dtype, monkeypatch):
    """The one-pass ranking picks what top_n picks from the whole score matrix, and so does the
    forward's selection in chunks of a few tokens. q = 0 makes every visible compressed token
    equally likely, so many blocks tie and the tie rule decides."""
    inputs = make_inputs(np.random.default_rng(T + HQ), B, T, HQ, H, 16, 16, config)
    a = {n: torch.from_numpy(x).to(DEVICE, dtype) for n, x in inputs.arrays().items()}
    q = torch.zeros_like(a["q"]) if zero_q else a["q"]
    scale = config.softmax_scale(16)
    o = torch.empty((B, T, HQ, 16), dtype=torch.float32, device=DEVICE)
    lse = torch.empty((B, T, HQ), dtype=torch.float32, device=DEVICE)
    compress.compressed_attention(q, a["k_cmp"], a["v_cmp"], o, lse, config, scale)
    scores = compress.importance_scores(q, a["k_cmp"], lse, n_slc_blocks(T, config), config, scale)
    want = select.top_n(scores, config)
    got = compress.running_top_n(q, a["k_cmp"], lse, config, scale)
    np.testing.assert_array_equal(got.cpu().numpy(), want.cpu().numpy())
    monkeypatch.setattr(compress, "SCORE_CHUNK_ELEMENTS", B * H * scores.shape[-1] * 24)  # 24-token chunks
    chunked = compress.importance_top_n(q, a["k_cmp"], lse, config, scale)
    np.testing.assert_array_equal(chunked.cpu().numpy(), want.cpu().numpy())
    if zero_q:
        ties = (scores[..., 1:] == scores[..., :-1]) & (scores[..., 1:] > 0)
        assert ties.any(), "q = 0 was meant to make ties"


SMALL = NSAConfig(cmp_len=4, cmp_stride=2, slc_len=8, top_n=5)


@pytest.mark.parametrize(("B", "T", "H", "config"), [(2, 200, 3, CFG), (1, 70, 1, SMALL)])
def test_top_n_matches_stable_sort(B, T, H, config):
    """Scores rounded to a few levels (many exact ties): the same picks as nsa_torch's stable sort."""
    nb = -(-T // config.slc_len)
    scores = torch.randint(0, 4, (B, T, H, nb), generator=torch.Generator().manual_seed(T)).float()
    want = top_n(scores, torch.arange(T), config)
    got = select.top_n(scores.to(DEVICE), config)
    np.testing.assert_array_equal(got.cpu().numpy(), want.numpy())


@pytest.mark.parametrize("blocks_per_step", [1, 2, 4])
def test_selected_branch_any_blocks_per_step(blocks_per_step):
    """The selected branch on given blocks (some -1), folding 1, 2 or 4 blocks per loop step."""
    T, HQ, H, dk, dv = 80, 4, 2, 8, 16
    rng = np.random.default_rng(blocks_per_step)
    inputs = float32_values(make_inputs(rng, 1, T, HQ, H, dk, dv))
    idx = np.full((T, H, CFG.top_n), -1)
    for t in range(T):
        for h in range(H):
            c = t // CFG.slc_len
            count = rng.integers(1, min(c + 1, CFG.top_n) + 1)
            picked = np.sort(rng.choice(c + 1, size=count, replace=False))
            idx[t, h, : picked.size] = picked
    o_ref, lse_ref = ref_selected(inputs.q[0], inputs.k_slc[0], inputs.v_slc[0], idx, CFG, np)
    a = to_torch(inputs)
    o = torch.empty((1, T, HQ, dv), dtype=torch.float32, device=DEVICE)
    lse = torch.empty((1, T, HQ), dtype=torch.float32, device=DEVICE)
    indices = torch.from_numpy(idx[None]).to(DEVICE, torch.int32)
    select.selected_attention(a.q, a.k_slc, a.v_slc, indices, o, lse, CFG, CFG.softmax_scale(dk),
                              blocks_per_step=blocks_per_step)
    close(o[0], o_ref)
    close(lse[0], lse_ref)


def test_selected_branch_long_blocks():
    """l' = 200 > FWD_KEYS: each block folds in 64-key tiles (the last one partly masked)."""
    config = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=200, top_n=3, window=8)
    T, HQ, H, dk, dv = 450, 2, 1, 8, 8
    rng = np.random.default_rng(7)
    inputs = float32_values(make_inputs(rng, 1, T, HQ, H, dk, dv, config))
    idx = np.full((T, H, config.top_n), -1)
    for t in range(T):
        c = t // config.slc_len
        picked = np.sort(rng.choice(c + 1, size=min(c + 1, config.top_n), replace=False))
        idx[t, 0, : picked.size] = picked
    o_ref, lse_ref = ref_selected(inputs.q[0], inputs.k_slc[0], inputs.v_slc[0], idx, config, np)
    a = to_torch(inputs)
    o = torch.empty((1, T, HQ, dv), dtype=torch.float32, device=DEVICE)
    lse = torch.empty((1, T, HQ), dtype=torch.float32, device=DEVICE)
    indices = torch.from_numpy(idx[None]).to(DEVICE, torch.int32)
    select.selected_attention(a.q, a.k_slc, a.v_slc, indices, o, lse, config, config.softmax_scale(dk))
    close(o[0], o_ref)
    close(lse[0], lse_ref)


def test_varlen_matches_reference():
    cu = np.array([0, 5, 40, 97])
    inputs = make_inputs(np.random.default_rng(1), 1, 97, 4, 2, 8, 8, cu_seqlens=cu)
    inputs = float32_values(inputs)
    want = ref.nsa_attention(inputs, CFG)
    got = nsa.nsa_attention(to_torch(inputs).replace(cu_seqlens=cu), CFG)
    np.testing.assert_array_equal(got.indices.cpu().numpy(), want.indices)
    close(got.o, want.o)


def test_backward_needs_the_saved_outputs():
    backend = TritonBackend()
    assert backend.capabilities.ops == frozenset({"forward", "backward", "decode"})
    assert backend.capabilities.backward_needs == {"lse", "indices", "branch_o"}
    inputs = to_torch(make_inputs(np.random.default_rng(2), 1, 20, 2, 1, 8, 8))
    with pytest.raises(InvalidInputError, match=r"out\.branch_o must hold what the triton forward saved"):
        backend.backward(inputs, CFG, NSAOutput(inputs.q, inputs.gates, inputs.q), inputs.q)
