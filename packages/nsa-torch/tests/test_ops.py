"""The eager ops against the float64 reference at a few shapes (the full check is the conformance suite)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nsa_spec import NSAConfig, NSAInputs
from nsa_spec import reference as ref
from nsa_spec.contract import CACHE_ARRAYS
from nsa_spec.reference import decode as ref_decode
from nsa_torch.backend import TorchBackend
from nsa_torch.ops import decode, nsa, select

CFG = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=16, top_n=4, window=24)


def make_inputs(rng, B, T, HQ, H, dk, dv, config=CFG, cu_seqlens=None):
    raw = {
        "q": rng.standard_normal((B, T, HQ, dk)),
        "k_raw": rng.standard_normal((B, T, H, dk)), "v_raw": rng.standard_normal((B, T, H, dv)),
        "k_slc": rng.standard_normal((B, T, H, dk)), "v_slc": rng.standard_normal((B, T, H, dv)),
        "k_win": rng.standard_normal((B, T, H, dk)), "v_win": rng.standard_normal((B, T, H, dv)),
        "gates": rng.uniform(size=(B, T, HQ, 3)),
    }
    return ref.compress_inputs(**raw, config=config, cu_seqlens=cu_seqlens)


def to_torch(inputs: NSAInputs) -> NSAInputs:
    return inputs.replace(**{n: torch.from_numpy(x.copy()) for n, x in inputs.arrays().items()})


@pytest.mark.parametrize("chunk_bytes", [None, 20_000])
@pytest.mark.parametrize(
    ("B", "T", "HQ", "H", "dk", "dv"), [(2, 101, 4, 2, 8, 6), (1, 7, 2, 1, 4, 4), (1, 130, 8, 1, 8, 8)]
)
def test_forward_matches_reference(B, T, HQ, H, dk, dv, chunk_bytes):
    inputs = make_inputs(np.random.default_rng(T), B, T, HQ, H, dk, dv)
    want = ref.nsa_attention(inputs, CFG)
    got = nsa.nsa_attention(to_torch(inputs), CFG, chunk_bytes=chunk_bytes)
    np.testing.assert_array_equal(got.indices.numpy(), want.indices)
    np.testing.assert_allclose(got.o.numpy(), want.o, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.lse.numpy(), want.lse, rtol=1e-12, atol=1e-12)


def test_varlen_matches_reference():
    cu = np.array([0, 5, 40, 97])
    inputs = make_inputs(np.random.default_rng(1), 1, 97, 4, 2, 8, 8, cu_seqlens=cu)
    want = ref.nsa_attention(inputs, CFG)
    got = nsa.nsa_attention(to_torch(inputs).replace(cu_seqlens=torch.from_numpy(cu)), CFG)
    np.testing.assert_array_equal(got.indices.numpy(), want.indices)
    np.testing.assert_allclose(got.o.numpy(), want.o, rtol=1e-12, atol=1e-12)


def test_backward_matches_gradient_oracle():
    pytest.importorskip("jax")
    from nsa_spec.grad import nsa_attention_grads

    inputs = make_inputs(np.random.default_rng(3), 1, 70, 4, 2, 8, 6)
    grad_o = np.random.default_rng(4).standard_normal((1, 70, 4, 6))
    backend = TorchBackend()
    t_inputs = to_torch(inputs)
    out = backend.forward(t_inputs, CFG)
    got = backend.backward(t_inputs, CFG, out, torch.from_numpy(grad_o))
    want = nsa_attention_grads(inputs, CFG, grad_o, out.indices.numpy())
    for name in inputs.arrays():
        np.testing.assert_allclose(getattr(got, name).numpy(), getattr(want, name), rtol=1e-10, atol=1e-12)


def test_top_n_ties_lower_index_wins():
    config = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=16, top_n=5, window=8)
    scores = torch.zeros(1, 1, 1, 20, dtype=torch.float64)
    positions = torch.tensor([19 * 16])
    got = select.top_n(scores, positions, config)
    want = ref.top_n(np.zeros((1, 1, 20)), np.array([19 * 16]), config)
    np.testing.assert_array_equal(got[0].numpy(), want)
    assert got.tolist() == [[[[0, 1, 2, 18, 19]]]]


def test_decode_matches_reference_and_counts_reads():
    """Per-sequence lengths: a batch joined from prefills of different lengths, then steps."""
    rng = np.random.default_rng(5)
    HQ, H, dk, dv = 4, 2, 8, 6
    prompts = [rng.standard_normal((1, T, H, d)) for T in (3, 41) for d in (dk, dv, dk, dv, dk, dv)]
    parts_np, parts_t = [], []
    for i, T in enumerate((3, 41)):
        kv = prompts[6 * i : 6 * i + 6]
        parts_np.append(ref.from_streams(*kv, CFG, capacity=T + 5))
        parts_t.append(decode.from_streams(*map(torch.from_numpy, kv), CFG, capacity=T + 5 * i))
    cache_np, cache_t = ref.join(parts_np, CFG), decode.join(parts_t, CFG)
    for _ in range(60):
        if cache_t.lengths.max() >= cache_t.capacity:
            cache_t = decode.resize(cache_t, 2 * cache_t.capacity, CFG)
        q = rng.standard_normal((2, 1, HQ, dk))
        kv = [rng.standard_normal((2, 1, H, d)) for d in (dk, dv, dk, dv, dk, dv)]
        gates = rng.uniform(size=(2, 1, HQ, 3))
        want, cache_np = ref.decode_step(cache_np, q, *kv, gates, CFG)
        got, cache_t = decode.decode_step(
            cache_t, torch.from_numpy(q), *map(torch.from_numpy, kv), torch.from_numpy(gates), CFG
        )
        np.testing.assert_array_equal(cache_t.lengths.numpy(), cache_np.lengths)
        np.testing.assert_array_equal(got.out.indices.numpy(), want.out.indices)
        np.testing.assert_array_equal(got.reads.numpy(), want.reads)
        np.testing.assert_allclose(got.out.o.numpy(), want.out.o, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got.out.lse.numpy(), want.out.lse, rtol=1e-12, atol=1e-12)
    picked_np, picked_t = ref.select(cache_np, [1, 0, 1], CFG), decode.select(cache_t, [1, 0, 1], CFG)
    q, gates = rng.standard_normal((3, 1, HQ, dk)), rng.uniform(size=(3, 1, HQ, 3))
    want = ref.decode_attention(picked_np, q, gates, CFG)
    got = decode.decode_attention(picked_t, torch.from_numpy(q), torch.from_numpy(gates), CFG)
    np.testing.assert_allclose(got.out.o.numpy(), want.out.o, rtol=1e-12, atol=1e-12)


def test_decode_never_reads_unused_rows():
    """NaN in every row at or past a sequence's length changes neither append nor attention."""
    rng = np.random.default_rng(6)
    H, dk, dv = 2, 8, 6
    parts = [ref.from_streams(*(rng.standard_normal((1, T, H, d)) for d in (dk, dv, dk, dv, dk, dv)), CFG,
                              capacity=60) for T in (2, 9, 30)]
    clean = ref.join(parts, CFG)
    used = ref_decode.used_rows(clean, CFG)
    poisoned = clean.replace(**{n: np.where(used[n][..., None, None], getattr(clean, n), np.nan)
                                for n in CACHE_ARRAYS})
    q, gates = rng.standard_normal((3, 1, 4, dk)), rng.uniform(size=(3, 1, 4, 3))
    kv = [rng.standard_normal((3, 1, H, d)) for d in (dk, dv, dk, dv, dk, dv)]
    results = []
    for cache in (clean, poisoned):
        theirs = cache.replace(**{n: torch.from_numpy(getattr(cache, n).copy()) for n in CACHE_ARRAYS},
                               lengths=torch.from_numpy(cache.lengths.copy()))
        results.append(decode.decode_step(theirs, torch.from_numpy(q), *map(torch.from_numpy, kv),
                                          torch.from_numpy(gates), CFG)[0])
    assert torch.isfinite(results[1].out.o).all()
    torch.testing.assert_close(results[1].out.o, results[0].out.o, rtol=0, atol=0)
    torch.testing.assert_close(results[1].reads, results[0].reads)


def test_decode_step_reads_no_value_on_the_host():
    """append + decode_attention on meta tensors (which hold no values): any host read would raise,
    so the step needs no synchronisation and can be captured in a CUDA graph."""
    B, H, HQ, dk, dv = 2, 2, 4, 8, 6
    cache = decode.empty_cache(B, H, dk, dv, 64, CFG, torch.float32, "meta")
    tokens = [torch.empty(B, 1, H, d, device="meta") for d in (dk, dv, dk, dv, dk, dv)]
    q, gates = torch.empty(B, 1, HQ, dk, device="meta"), torch.empty(B, 1, HQ, 3, device="meta")
    result, _ = decode.decode_step(cache, q, *tokens, gates, CFG)
    assert result.out.o.shape == (B, 1, HQ, dv) and result.reads.shape == (B, H)
    assert result.out.indices.shape == (B, 1, H, CFG.top_n)

