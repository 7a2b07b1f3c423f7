"""Prefill equals step-by-step decode (NSA.md, Decode): outputs, lse, selection, every cache."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from nsa_spec.blocks import n_cmp
from nsa_spec.counters import tokens_read_exact
from nsa_spec.reference import compress, decode_step, emits, empty_cache, prefill
from spec_cases import STREAMS, cases

CACHE_FIELDS = ("k_raw", "v_raw", "k_cmp", "v_cmp", "k_slc", "v_slc", "k_win", "v_win")
TOL = {"rtol": 1e-12, "atol": 1e-13}  # float64 rounding of differently ordered sums


def step(cache, x, t, case):
    """One decode step for token t of the inputs `x`."""
    one = {n: a[:, t : t + 1] for n, a in x.items()}
    raw = (one[n] for n in ("k_raw", "v_raw", "k_slc", "v_slc", "k_win", "v_win"))
    return decode_step(cache, one["q"], *raw, one["gates"], case.config, case.phi, case.phi_params())


def assert_same_cache(got, want):
    assert got.length == want.length
    for name in CACHE_FIELDS:
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), **TOL, err_msg=name)


@given(case=cases(max_T=80, phis=("mean", "mlp")), data=st.data())
def test_prefill_equals_step_by_step_decode(case, data):
    x = case.inputs()
    full, full_cache = prefill(*(x[n] for n in STREAMS), case.config, case.phi, case.phi_params())
    cache = empty_cache(case.B, case.H, case.dk, case.dv)
    for t in range(case.T):
        result, cache = step(cache, x, t, case)
        np.testing.assert_array_equal(result.out.indices[:, 0], full.indices[:, t], err_msg=f"t={t}")
        np.testing.assert_allclose(result.out.o[:, 0], full.o[:, t], **TOL, err_msg=f"t={t}")
        np.testing.assert_allclose(result.out.lse[:, 0], full.lse[:, t], **TOL, err_msg=f"t={t}")
        np.testing.assert_array_equal(result.reads, tokens_read_exact(t + 1, case.config))
    assert_same_cache(cache, full_cache)
    assert cache.k_cmp.shape[1] == n_cmp(case.T, case.config)
    assert cache.k_win.shape[1] == min(case.T, case.config.window)
    # decode continues from a prefill of any prefix exactly as from single steps
    P = data.draw(st.integers(1, case.T), label="prefill length")
    prefix = {n: a[:, :P] for n, a in x.items()}
    _, cache = prefill(*(prefix[n] for n in STREAMS), case.config, case.phi, case.phi_params())
    for t in range(P, case.T):
        result, cache = step(cache, x, t, case)
        np.testing.assert_array_equal(result.out.indices[:, 0], full.indices[:, t], err_msg=f"t={t}")
        np.testing.assert_allclose(result.out.o[:, 0], full.o[:, t], **TOL, err_msg=f"t={t}")
    assert_same_cache(cache, full_cache)


@given(case=cases(max_T=40, phis=("mean", "mlp")))
def test_cache_holds_the_schedule(case):
    """Compressed tokens appear exactly when emits() says, and equal phi of the last l raw tokens;
    the rolling window holds the last w win tokens, oldest first."""
    x = case.inputs()
    cfg = case.config
    cache = empty_cache(case.B, case.H, case.dk, case.dv)
    for t in range(case.T):
        before = cache.k_cmp.shape[1]
        _, cache = step(cache, x, t, case)
        assert cache.k_cmp.shape[1] - before == int(emits(t + 1, cfg))
        w = slice(max(0, t + 1 - cfg.window), t + 1)
        np.testing.assert_array_equal(cache.k_win, x["k_win"][:, w])
        np.testing.assert_array_equal(cache.v_win, x["v_win"][:, w])
    params = case.phi_params()
    for i in range(cache.k_cmp.shape[1]):
        block = slice(i * cfg.cmp_stride, i * cfg.cmp_stride + cfg.cmp_len)
        for name, raw, p in (("k_cmp", "k_raw", "k"), ("v_cmp", "v_raw", "v")):
            want = compress(x[raw][:, block], cfg, case.phi, None if params is None else params[p])
            got = getattr(cache, name)[:, i : i + 1]
            np.testing.assert_allclose(got, want, **TOL, err_msg=f"{name}[{i}]")
