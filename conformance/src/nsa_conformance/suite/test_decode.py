"""Decode: prefill equals step-by-step decode, read counters are measured, not computed, and a
batch of sequences of different lengths decodes each over its own tokens only (layout v2)."""

from __future__ import annotations

import numpy as np
import pytest
from nsa_spec.config import NSAConfig
from nsa_spec.contract import CACHE_ARRAYS, DecodeCache, NSAOutput
from nsa_spec.counters import tokens_read_exact, tokens_read_table4
from nsa_spec.reference.decode import append, empty_cache, from_streams, join, select, used_rows

from nsa_conformance.cases import DECODE, VARIED_DECODE, Case, contract_inputs
from nsa_conformance.harness import Runner, assert_forward, assert_last_row

CASES = [pytest.param(c, id=str(c), marks=[pytest.mark.quick] if i == 0 else [])
         for i, c in enumerate(DECODE)]
VARIED = [pytest.param(c, id=str(c), marks=[pytest.mark.quick] if i == 0 else [])
          for i, c in enumerate(VARIED_DECODE)]
TOKEN = ("k_raw", "v_raw", "k_slc", "v_slc", "k_win", "v_win")


def assert_reads(reads: np.ndarray, lengths: np.ndarray, H: int, config: NSAConfig) -> None:
    expected = np.array([[tokens_read_exact(int(S), config)] * H for S in lengths])
    assert reads.shape == expected.shape, f"reads: shape {reads.shape}, expected {expected.shape}"
    assert np.array_equal(reads, expected), (
        f"lengths {lengths.tolist()}: measured reads {reads.tolist()}, exact counts {expected.tolist()}"
    )


@pytest.mark.parametrize("case", CASES)
def test_prefill_equals_decode(runner, case: Case) -> None:
    """forward on a prompt vs decode at every position, caches built by reference.decode.append
    (with spare capacity: rows past the length are never part of the answer).

    Both must pass the oracle (selection by the near-tie policy, o and lse by the tolerance), and
    every step's measured reads must equal counters.tokens_read_exact.
    """
    runner.require("forward", case)
    runner.require("decode", case)
    raw, config = case.raw_streams(), case.config
    prefill, seen, _ = runner.forward(contract_inputs(raw, config), config)
    assert_forward(runner, seen, config, prefill)

    cache = empty_cache(case.B, case.H, case.dk, case.dv, case.T + 5, config)
    steps = []
    for t in range(case.T):
        token = {name: raw[name][:, t : t + 1] for name in raw}
        cache = append(cache, *(token[n] for n in TOKEN), config)
        theirs, _ = runner.put_cache(cache)
        result = runner.backend.decode(theirs, runner.put(token["q"]), runner.put(token["gates"]), config)
        assert_reads(np.asarray(runner.backend.to_numpy(result.reads)), cache.lengths, case.H, config)
        steps.append(runner.output(result.out))
    decoded = NSAOutput(o=np.concatenate([s.o for s in steps], axis=1),
                        lse=np.concatenate([s.lse for s in steps], axis=1),
                        indices=np.concatenate([s.indices for s in steps], axis=1))
    assert_forward(runner, seen, config, decoded)


@pytest.mark.quick
@pytest.mark.parametrize("length", [8192, 16384])
def test_table4_reads(runner, length: int) -> None:
    """At the paper's sizes a decode step reads N_cmp(S) + n*l' + w tokens (Table 4 up to rounding)."""
    config = NSAConfig()
    case = Case(1, length, 16, 1, 16, 16, l=config.cmp_len, d=config.cmp_stride, ls=config.slc_len,
                n=config.top_n, w=config.window)
    runner.require("decode", case)
    raw = case.raw_streams()
    cache = from_streams(*(raw[n] for n in TOKEN), config)
    theirs, _ = runner.put_cache(cache)
    result = runner.backend.decode(theirs, runner.put(raw["q"][:, -1:]), runner.put(raw["gates"][:, -1:]),
                                   config)
    reads = np.asarray(runner.backend.to_numpy(result.reads))
    exact = tokens_read_exact(length, config)
    assert np.all(reads == exact), f"S={length}: measured reads {reads.tolist()}, exact count {exact}"
    assert 0 <= tokens_read_table4(length, config) - exact <= 2
    assert np.all(np.isfinite(runner.get(result.out.o)))


def varied_lengths(case: Case) -> tuple[int, ...]:
    """B lengths from T down to 1: below l, past n blocks, at a block edge."""
    picks = (case.T, 1, case.l - 1, case.n * case.ls + 3, case.ls)
    return tuple(min(case.T, max(1, S)) for S in picks[: case.B])


def joined(case: Case, lengths: tuple[int, ...], spare: int) -> tuple[DecodeCache, list[dict]]:
    """One cache of sequence b's first lengths[b] tokens, each in `spare` more rows than it needs."""
    raw = case.raw_streams()
    seqs = [{n: x[b : b + 1, :S] for n, x in raw.items()} for b, S in enumerate(lengths)]
    parts = [from_streams(*(s[n] for n in TOKEN), case.config, capacity=S + spare + b)
             for b, (s, S) in enumerate(zip(seqs, lengths, strict=True))]
    return join(parts, case.config), seqs


def decode_each(runner: Runner, case: Case, cache: DecodeCache, seqs: list[dict]) -> None:
    """One decode step of the batch `cache` (sequence b = seqs[b]) judged sequence by sequence
    against the oracle's last row of that sequence alone."""
    config = case.config
    q = np.concatenate([s["q"][:, -1:] for s in seqs])
    gates = np.concatenate([s["gates"][:, -1:] for s in seqs])
    theirs, _ = runner.put_cache(cache)
    result = runner.backend.decode(theirs, runner.put(q), runner.put(gates), config)
    assert_reads(np.asarray(runner.backend.to_numpy(result.reads)), cache.lengths, case.H, config)
    out = runner.output(result.out)
    for b, s in enumerate(seqs):
        _, seen = runner.put_inputs(contract_inputs(s, config))
        row = NSAOutput(o=out.o[b : b + 1], lse=out.lse[b : b + 1], indices=out.indices[b : b + 1])
        try:
            assert_last_row(runner, seen, config, row)
        except AssertionError as e:
            raise AssertionError(f"sequence {b} of lengths {cache.lengths.tolist()}: {e}") from None


@pytest.mark.parametrize("case", VARIED)
def test_varied_lengths_decode_together(runner, case: Case) -> None:
    """Sequences of different lengths in one batch: each one's step equals the last row of its
    own prefill (the oracle on that sequence alone), and reads are its own exact count."""
    runner.require("decode", case)
    cache, seqs = joined(case, varied_lengths(case), spare=3)
    decode_each(runner, case, cache, seqs)


@pytest.mark.parametrize("case", VARIED)
def test_select_sequences(runner, case: Case) -> None:
    """Dropping and reordering sequences (reference.decode.select) keeps each one's own answer."""
    runner.require("decode", case)
    cache, seqs = joined(case, varied_lengths(case), spare=0)
    keep = list(range(case.B))[::-2]  # reversed, every other one dropped
    decode_each(runner, case, select(cache, keep, case.config), [seqs[b] for b in keep])


@pytest.mark.parametrize("case", VARIED)
def test_unused_rows_are_never_read(runner, case: Case) -> None:
    """NaN in every row at or past a sequence's length (ring rows not yet written, compressed
    rows not yet emitted, spare capacity) never reaches a result."""
    runner.require("decode", case)
    cache, seqs = joined(case, varied_lengths(case), spare=9)
    used = used_rows(cache, case.config)
    poisoned = cache.replace(**{n: np.where(used[n][..., None, None], getattr(cache, n), np.nan)
                                for n in CACHE_ARRAYS})
    assert all(np.isnan(getattr(poisoned, n)).any() for n in ("k_slc", "k_cmp", "v_win"))
    decode_each(runner, case, poisoned, seqs)
