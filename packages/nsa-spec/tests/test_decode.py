"""Prefill equals step-by-step decode (NSA.md, Decode): outputs, lse, selection, every cache;
batches of sequences of different lengths, joined and selected; unused rows never read."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nsa_spec import NSAConfig
from nsa_spec.blocks import n_cmp
from nsa_spec.contract import CACHE_ARRAYS
from nsa_spec.counters import tokens_read_exact
from nsa_spec.reference import (
    compress,
    decode_attention,
    decode_step,
    emits,
    empty_cache,
    join,
    nsa_forward,
    prefill,
    resize,
    select,
)
from nsa_spec.reference.decode import positions_of, used_rows
from spec_cases import STREAMS, cases

TOL = {"rtol": 1e-12, "atol": 1e-13}  # float64 rounding of differently ordered sums
TOKEN = ("k_raw", "v_raw", "k_slc", "v_slc", "k_win", "v_win")
CFG = NSAConfig(cmp_len=8, cmp_stride=4, slc_len=16, top_n=3, window=12)


def step(cache, x, t, case):
    """One decode step for token t of the inputs `x`."""
    one = {n: a[:, t : t + 1] for n, a in x.items()}
    return decode_step(
        cache, one["q"], *(one[n] for n in TOKEN), one["gates"], case.config, case.phi, case.phi_params()
    )


def assert_same_cache(got, want, config):
    """Same lengths and the same tokens in every used row (capacities may differ)."""
    np.testing.assert_array_equal(got.lengths, want.lengths)
    for name in CACHE_ARRAYS:
        for b in range(len(want.lengths)):
            rows_got, rows_want = positions_of(got, name, b, config), positions_of(want, name, b, config)
            np.testing.assert_allclose(
                getattr(got, name)[b, rows_got],
                getattr(want, name)[b, rows_want],
                **TOL,
                err_msg=f"{name}[{b}]",
            )


@given(case=cases(max_T=80, phis=("mean", "mlp")), data=st.data())
def test_prefill_equals_step_by_step_decode(case, data):
    x = case.inputs()
    full, full_cache = prefill(*(x[n] for n in STREAMS), case.config, case.phi, case.phi_params())
    cache = empty_cache(case.B, case.H, case.dk, case.dv, 1, case.config)  # grows as it fills
    for t in range(case.T):
        result, cache = step(cache, x, t, case)
        np.testing.assert_array_equal(result.out.indices[:, 0], full.indices[:, t], err_msg=f"t={t}")
        np.testing.assert_allclose(result.out.o[:, 0], full.o[:, t], **TOL, err_msg=f"t={t}")
        np.testing.assert_allclose(result.out.lse[:, 0], full.lse[:, t], **TOL, err_msg=f"t={t}")
        np.testing.assert_array_equal(result.reads, tokens_read_exact(t + 1, case.config))
    assert_same_cache(cache, full_cache, case.config)
    assert cache.capacity >= case.T and cache.k_cmp.shape[1] == n_cmp(cache.capacity, case.config)
    # decode continues from a prefill of any prefix exactly as from single steps
    P = data.draw(st.integers(1, case.T), label="prefill length")
    prefix = {n: a[:, :P] for n, a in x.items()}
    _, cache = prefill(
        *(prefix[n] for n in STREAMS),
        case.config,
        case.phi,
        case.phi_params(),
        capacity=data.draw(st.integers(P, case.T + 3), label="capacity"),
    )
    for t in range(P, case.T):
        result, cache = step(cache, x, t, case)
        np.testing.assert_array_equal(result.out.indices[:, 0], full.indices[:, t], err_msg=f"t={t}")
        np.testing.assert_allclose(result.out.o[:, 0], full.o[:, t], **TOL, err_msg=f"t={t}")
    assert_same_cache(cache, full_cache, case.config)


@given(case=cases(max_T=40, phis=("mean", "mlp")))
def test_cache_holds_the_schedule(case):
    """Compressed tokens appear exactly when emits() says, and equal phi of the last l raw tokens;
    the rings hold position p in row p % l (raw) and p % w (win)."""
    x = case.inputs()
    cfg = case.config
    cache = empty_cache(case.B, case.H, case.dk, case.dv, case.T, cfg)
    for t in range(case.T):
        _, cache = step(cache, x, t, case)
        assert cache.capacity == case.T
        assert used_rows(cache, cfg)["k_cmp"].sum(1).tolist() == [n_cmp(t + 1, cfg)] * case.B
        assert n_cmp(t + 1, cfg) - n_cmp(t, cfg) == int(emits(t + 1, cfg))
        for name, ring in (("k_win", cfg.window), ("v_win", cfg.window), ("k_raw", cfg.cmp_len)):
            p = np.arange(max(0, t + 1 - ring), t + 1)
            np.testing.assert_array_equal(getattr(cache, name)[:, p % ring], x[name][:, p])
    params = case.phi_params()
    for i in range(n_cmp(case.T, cfg)):
        block = slice(i * cfg.cmp_stride, i * cfg.cmp_stride + cfg.cmp_len)
        for name, raw, p in (("k_cmp", "k_raw", "k"), ("v_cmp", "v_raw", "v")):
            want = compress(x[raw][:, block], cfg, case.phi, None if params is None else params[p])
            got = getattr(cache, name)[:, i : i + 1]
            np.testing.assert_allclose(got, want, **TOL, err_msg=f"{name}[{i}]")


def streams(T, seed, B=1, HQ=4, H=2, dk=5, dv=3):
    rng = np.random.default_rng(seed)
    shapes = {"q": (B, T, HQ, dk), "gates": (B, T, HQ, 3)}
    shapes.update({n: (B, T, H, dk if n.startswith("k") else dv) for n in TOKEN})
    return {n: rng.standard_normal(s) for n, s in shapes.items()}


@pytest.mark.parametrize("lengths", [(5, 40, 17), (1, 70), (33, 33, 2, 64)])
def test_varied_lengths_decode_together(lengths):
    """Sequences of different lengths joined into one batch: each step of each sequence equals
    that sequence's own full forward at its position, and reads are each sequence's own count."""
    steps = 6
    xs = [streams(S + steps, seed=i) for i, S in enumerate(lengths)]
    fulls = [nsa_forward(*(x[n] for n in STREAMS), CFG) for x in xs]
    caches = [
        prefill(*(x[n][:, :S] for n in STREAMS), CFG, capacity=S + i)[1]
        for i, (x, S) in enumerate(zip(xs, lengths, strict=True))
    ]
    cache = join(caches, CFG)
    assert cache.capacity == max(S + i for i, S in enumerate(lengths))
    for s in range(steps):
        token = {
            n: np.concatenate([x[n][:, S + s : S + s + 1] for x, S in zip(xs, lengths, strict=True)])
            for n in STREAMS
        }
        result, cache = decode_step(cache, token["q"], *(token[n] for n in TOKEN), token["gates"], CFG)
        np.testing.assert_array_equal(cache.lengths, np.array(lengths) + s + 1)
        for b, (full, S) in enumerate(zip(fulls, lengths, strict=True)):
            np.testing.assert_allclose(result.out.o[b, 0], full.o[0, S + s], **TOL, err_msg=f"b={b} s={s}")
            np.testing.assert_array_equal(result.out.indices[b, 0], full.indices[0, S + s])
            assert result.reads[b].tolist() == [tokens_read_exact(S + s + 1, CFG)] * 2


def test_select_drops_and_reorders_sequences():
    x = [streams(T, seed=T) for T in (20, 45, 9)]
    cache = join([prefill(*(a[n] for n in STREAMS), CFG)[1] for a in x], CFG)
    picked = select(cache, [2, 0], CFG)
    np.testing.assert_array_equal(picked.lengths, [9, 20])
    q = np.concatenate([x[2]["q"][:, -1:], x[0]["q"][:, -1:]])
    gates = np.concatenate([x[2]["gates"][:, -1:], x[0]["gates"][:, -1:]])
    got = decode_attention(picked, q, gates, CFG)
    for b, a in enumerate((x[2], x[0])):
        _, own = prefill(*(a[n] for n in STREAMS), CFG)
        alone = decode_attention(own, a["q"][:, -1:], a["gates"][:, -1:], CFG)
        np.testing.assert_array_equal(got.out.o[b], alone.out.o[0])
        np.testing.assert_array_equal(got.reads[b], alone.reads[0])


def test_unused_rows_are_never_read():
    """NaN in every row at or past a sequence's length (and spare capacity) changes nothing."""
    x = [streams(T, seed=T) for T in (3, 30, 61)]
    cache = join([prefill(*(a[n] for n in STREAMS), CFG, capacity=70)[1] for a in x], CFG)
    q = np.concatenate([a["q"][:, -1:] for a in x])
    gates = np.concatenate([a["gates"][:, -1:] for a in x])
    clean = decode_attention(cache, q, gates, CFG)
    used = used_rows(cache, CFG)
    poisoned = cache.replace(
        **{n: np.where(used[n][..., None, None], getattr(cache, n), np.nan) for n in CACHE_ARRAYS}
    )
    assert all(np.isnan(getattr(poisoned, n)).any() for n in CACHE_ARRAYS)
    dirty = decode_attention(poisoned, q, gates, CFG)
    np.testing.assert_array_equal(dirty.out.o, clean.out.o)
    np.testing.assert_array_equal(dirty.out.lse, clean.out.lse)
    np.testing.assert_array_equal(dirty.reads, clean.reads)
    # appending to a poisoned cache reads no unused row either
    token = {n: np.concatenate([a[n][:, -1:] for a in x]) for n in TOKEN}
    stepped = decode_step(poisoned, q, *(token[n] for n in TOKEN), gates, CFG)[0]
    want = decode_step(cache, q, *(token[n] for n in TOKEN), gates, CFG)[0]
    np.testing.assert_array_equal(stepped.out.o, want.out.o)


def test_resize_keeps_every_token():
    x = streams(37, seed=1)
    _, cache = prefill(*(x[n] for n in STREAMS), CFG)
    bigger = resize(cache, 100, CFG)
    assert bigger.capacity == 100 and bigger.k_cmp.shape[1] == n_cmp(100, CFG)
    assert_same_cache(bigger, cache, CFG)
    q, g = x["q"][:, -1:], x["gates"][:, -1:]
    got, want = decode_attention(bigger, q, g, CFG), decode_attention(cache, q, g, CFG)
    np.testing.assert_array_equal(got.out.o, want.out.o)


@given(case=cases(max_T=60, phis=("mean", "mlp")), data=st.data())
def test_joined_sequences_equal_each_alone(case, data):
    """Any lengths 1..T joined in one batch: one decode step per sequence equals its full forward."""
    x = case.inputs()
    lengths = data.draw(st.lists(st.integers(1, case.T), min_size=1, max_size=3), label="lengths")
    seqs = [{n: a[:1, :S] for n, a in x.items()} for S in lengths]
    params = case.phi_params()
    caches = [
        prefill(*(s[n] for n in STREAMS), case.config, case.phi, params, capacity=case.T)[1] for s in seqs
    ]
    cache = join(caches, case.config)
    q = np.concatenate([s["q"][:, -1:] for s in seqs])
    gates = np.concatenate([s["gates"][:, -1:] for s in seqs])
    step = decode_attention(cache, q, gates, case.config)
    for b, s in enumerate(seqs):
        full = nsa_forward(*(s[n] for n in STREAMS), case.config, case.phi, params)
        np.testing.assert_array_equal(step.out.indices[b, 0], full.indices[0, -1])
        np.testing.assert_allclose(step.out.o[b, 0], full.o[0, -1], **TOL, err_msg=f"b={b}")
        np.testing.assert_array_equal(step.reads[b], tokens_read_exact(lengths[b], case.config))
