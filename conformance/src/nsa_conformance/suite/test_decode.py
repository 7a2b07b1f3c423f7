"""Decode: prefill equals step-by-step decode, and read counters are measured, not computed."""

from __future__ import annotations

import numpy as np
import pytest
from nsa_spec.config import NSAConfig
from nsa_spec.contract import DecodeCache, NSAOutput
from nsa_spec.counters import tokens_read_exact, tokens_read_table4
from nsa_spec.reference.compress import compress
from nsa_spec.reference.decode import append, empty_cache

from nsa_conformance.cases import DECODE, Case, contract_inputs
from nsa_conformance.harness import assert_forward

CASES = [pytest.param(c, id=str(c), marks=[pytest.mark.quick] if i == 0 else [])
         for i, c in enumerate(DECODE)]


@pytest.mark.parametrize("case", CASES)
def test_prefill_equals_decode(runner, case: Case) -> None:
    """forward on a prompt vs decode at every position, caches built by reference.decode.append.

    Both must pass the oracle (selection by the near-tie policy, o and lse by the tolerance), and
    every step's measured reads must equal counters.tokens_read_exact.
    """
    runner.require("forward", case)
    runner.require("decode", case)
    raw, config = case.raw_streams(), case.config
    prefill, seen, _ = runner.forward(contract_inputs(raw, config), config)
    assert_forward(runner, seen, config, prefill)

    cache = empty_cache(case.B, case.H, case.dk, case.dv)
    steps = []
    for t in range(case.T):
        token = {name: raw[name][:, t : t + 1] for name in raw}
        cache = append(cache, token["k_raw"], token["v_raw"], token["k_slc"], token["v_slc"],
                       token["k_win"], token["v_win"], config)
        theirs, _ = runner.put_cache(cache)
        result = runner.backend.decode(theirs, runner.put(token["q"]), runner.put(token["gates"]), config)
        reads = np.asarray(runner.backend.to_numpy(result.reads))
        expected = tokens_read_exact(t + 1, config)
        assert reads.shape == (case.B, case.H), f"reads: shape {reads.shape}, expected {(case.B, case.H)}"
        assert np.all(reads == expected), (
            f"step S={t + 1}: measured reads {reads.tolist()}, exact count {expected}"
        )
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
    win = slice(-config.window, None)
    cache = DecodeCache(raw["k_raw"], raw["v_raw"], compress(raw["k_raw"], config),
                        compress(raw["v_raw"], config), raw["k_slc"], raw["v_slc"],
                        raw["k_win"][:, win], raw["v_win"][:, win], length=length)
    theirs, _ = runner.put_cache(cache)
    result = runner.backend.decode(theirs, runner.put(raw["q"][:, -1:]), runner.put(raw["gates"][:, -1:]),
                                   config)
    reads = np.asarray(runner.backend.to_numpy(result.reads))
    exact = tokens_read_exact(length, config)
    assert np.all(reads == exact), f"S={length}: measured reads {reads.tolist()}, exact count {exact}"
    assert 0 <= tokens_read_table4(length, config) - exact <= 2
    assert np.all(np.isfinite(runner.get(result.out.o)))
