"""The eager ops against the float64 reference at a few shapes (the full check is the conformance suite)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nsa_spec import NSAConfig, NSAInputs
from nsa_spec import reference as ref
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
    rng = np.random.default_rng(5)
    B, H, HQ, dk, dv = 2, 2, 4, 8, 6
    cache_np, cache_t = ref.empty_cache(B, H, dk, dv), decode.empty_cache(B, H, dk, dv, torch.float64)
    for _ in range(90):
        q = rng.standard_normal((B, 1, HQ, dk))
        kv = [rng.standard_normal((B, 1, H, d)) for d in (dk, dv, dk, dv, dk, dv)]
        gates = rng.uniform(size=(B, 1, HQ, 3))
        want, cache_np = ref.decode_step(cache_np, q, *kv, gates, CFG)
        got, cache_t = decode.decode_step(
            cache_t, torch.from_numpy(q), *map(torch.from_numpy, kv), torch.from_numpy(gates), CFG
        )
        np.testing.assert_array_equal(got.out.indices.numpy(), want.out.indices)
        np.testing.assert_array_equal(got.reads.numpy(), want.reads)
        np.testing.assert_allclose(got.out.o.numpy(), want.out.o, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got.out.lse.numpy(), want.out.lse, rtol=1e-12, atol=1e-12)
