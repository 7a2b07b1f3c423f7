"""Masked attention, gates and the combine (NSA.md, "Attention of one query" and Eq. 5)."""

from __future__ import annotations

import numpy as np
import pytest
from nsa_spec import NSAConfig
from nsa_spec.reference import (
    attend,
    attention_probs,
    combine,
    compress,
    decode_attention,
    gate_activation,
    init_mlp_params,
    nsa_forward,
    prefill,
)


def test_attend_matches_softmax_written_out():
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((5, 4, 3)), rng.standard_normal((7, 2, 3)), rng.standard_normal((7, 2, 6))
    allowed = rng.uniform(size=(2, 5, 7)) < 0.6
    allowed[:, :, 0] = True
    o, lse = attend(q, k, v, allowed, 0.7)
    for t in range(5):
        for h in range(4):
            keep = allowed[h // 2, t]
            s = 0.7 * k[keep, h // 2] @ q[t, h]
            p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            np.testing.assert_allclose(o[t, h], p @ v[keep, h // 2], rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(lse[t, h], np.log(np.exp(s).sum()), rtol=1e-13)


def test_empty_key_set_is_zero_and_minus_inf():
    """No allowed key, or no key at all: o = 0, lse = -inf, no NaN and no RuntimeWarning."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((3, 2, 4))
    k, v = rng.standard_normal((5, 1, 4)), rng.standard_normal((5, 1, 2))
    allowed = np.zeros((1, 3, 5), dtype=bool)
    allowed[0, 2, 1] = True  # only query 2 sees a key
    p, lse = attention_probs(q, k, allowed, 0.5)
    o, _ = attend(q, k, v, allowed, 0.5)
    np.testing.assert_array_equal(p[:, :, :2], 0.0)
    np.testing.assert_array_equal(o[:2], 0.0)
    assert np.all(np.isneginf(lse[:2])) and np.all(np.isfinite(lse[2]))
    np.testing.assert_allclose(o[2], np.repeat(v[1], 2, axis=0), rtol=1e-15)
    o, lse = attend(q, k[:0], v[:0], np.zeros((1, 3, 0), dtype=bool), 0.5)
    np.testing.assert_array_equal(o, np.zeros((3, 2, 2)))
    assert np.all(np.isneginf(lse))


def test_decode_before_the_first_compressed_token():
    """A cache shorter than l has no compressed token: lse_cmp = -inf and o stays finite."""
    cfg = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=8, top_n=3, window=4)
    rng = np.random.default_rng(2)
    x = [rng.standard_normal((1, 5, 1, 2)) for _ in range(7)]
    gates = np.full((1, 5, 1, 3), 0.5)
    out, cache = prefill(*x, gates, cfg)
    assert cache.k_cmp.shape[1] == 0
    step = decode_attention(cache, x[0][:, -1:], gates[:, -1:], cfg)
    assert np.isneginf(step.out.lse[0, 0, 0, 0]) and np.all(np.isfinite(step.out.lse[0, 0, 0, 1:]))
    assert np.all(np.isfinite(step.out.o))
    np.testing.assert_allclose(step.out.o[:, 0], out.o[:, -1], rtol=1e-12, atol=1e-14)


def test_gate_activations():
    logits = np.array([[0.0, 2.0, -1.0]])
    np.testing.assert_allclose(gate_activation(logits, "sigmoid"), 1 / (1 + np.exp(-logits)), rtol=1e-15)
    e = np.exp(logits - 2.0)
    np.testing.assert_allclose(gate_activation(logits, "softmax"), e / e.sum(), rtol=1e-15)
    big = gate_activation(np.array([[1000.0, 0.0, -1000.0]]), "softmax")
    np.testing.assert_array_equal(big, [[1.0, 0.0, 0.0]])


def test_combine_is_the_gated_sum():
    rng = np.random.default_rng(3)
    o = [rng.standard_normal((4, 2, 5)) for _ in range(3)]
    g = rng.uniform(size=(4, 2, 3))
    want = sum(g[..., i : i + 1] * o[i] for i in range(3))
    np.testing.assert_allclose(combine(*o, g), want, rtol=1e-15)


@pytest.mark.parametrize("phi", ["mean", "mlp"])
def test_compress_blocks(phi):
    """Compressed token i is phi of raw tokens [i*d, i*d + l): mean pooling, or the MLP written out."""
    cfg = NSAConfig(cmp_len=4, cmp_stride=2, slc_len=4, top_n=3, window=2)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 11, 3, 5))  # N_cmp(11) = 4
    params = init_mlp_params(rng, 4, 5, 6) if phi == "mlp" else None
    got = compress(x, cfg, phi, params)
    assert got.shape == (2, 4, 3, 5)
    for i in range(4):
        block = x[:, 2 * i : 2 * i + 4]  # [B, l, H, D]
        if phi == "mean":
            want = block.mean(axis=1)
        else:
            flat = np.transpose(block + params["pos"][None, :, None], (0, 2, 1, 3)).reshape(2, 3, 20)
            h = flat @ params["w1"] + params["b1"]
            want = (h / (1 + np.exp(-h))) @ params["w2"] + params["b2"]
        np.testing.assert_allclose(got[:, i], want, rtol=1e-13, atol=1e-15)


def test_softmax_is_stable_for_large_scores():
    """Scores near 1e4 neither overflow nor lose the lse: lse = max + log(sum exp(s - max))."""
    q = np.array([[[100.0, 0.0]]])  # [T=1, HQ=1, dk=2]
    k = np.array([[[100.0, 0.0]], [[99.0, 0.0]], [[-100.0, 0.0]]])  # scores 1e4, 9900, -1e4
    v = np.array([[[1.0]], [[2.0]], [[3.0]]])
    o, lse = attend(q, k, v, np.ones((1, 1, 3), dtype=bool), 1.0)
    e = np.exp(-100.0)
    np.testing.assert_allclose(lse[0, 0], 1e4 + np.log1p(e), rtol=1e-15)
    np.testing.assert_allclose(o[0, 0, 0], (1 + 2 * e) / (1 + e), rtol=1e-15)


def test_reference_computes_in_the_input_dtype():
    """float64 in, float64 out; float32 in runs the same code in float32, which the conformance
    suite uses as the naive low-precision computation. No silent up- or down-cast."""
    cfg = NSAConfig(cmp_len=4, cmp_stride=2, slc_len=8, top_n=3, window=4)
    rng = np.random.default_rng(5)
    x = [rng.standard_normal((1, 20, 2, 4)) for _ in range(7)]
    gates = np.full((1, 20, 2, 3), 0.5)
    o64 = nsa_forward(*x, gates, cfg).o
    o32 = nsa_forward(*(a.astype(np.float32) for a in x), gates.astype(np.float32), cfg).o
    assert o64.dtype == np.float64 and o32.dtype == np.float32
    np.testing.assert_allclose(o32, o64, rtol=1e-4, atol=1e-5)
    assert np.max(np.abs(o32 - o64)) > 0
