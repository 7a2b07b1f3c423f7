"""Hostile input: huge scores, packed sequences, NaN poison beyond segment ends, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from nsa_spec.blocks import cmp_cu_seqlens
from nsa_spec.contract import ARRAYS
from nsa_spec.reference.nsa import nsa_attention

from nsa_conformance import lowprec, tolerances
from nsa_conformance.cases import FORWARD, VARLEN, Case
from nsa_conformance.harness import assert_close, assert_forward, decisive


@pytest.mark.parametrize("case", [FORWARD[0], FORWARD[4]], ids=str)
def test_large_scores(runner, case: Case) -> None:
    """Scores in the hundreds: a softmax without max subtraction overflows; the oracle does not."""
    runner.require("forward", case)
    inputs = case.inputs()
    out, seen, _ = runner.forward(inputs.replace(q=8.0 * inputs.q), case.config)
    assert_forward(runner, seen, case.config, out)


@pytest.mark.parametrize("case", VARLEN, ids=str)
def test_varlen_equals_separate_runs(runner, case: Case) -> None:
    """A packed batch (cu_seqlens) gives what each sequence gives alone."""
    runner.require("forward", case)
    inputs, config = case.inputs(), case.config
    packed, seen, _ = runner.forward(inputs, config)
    assert_forward(runner, seen, config, packed)
    sure = decisive(seen, config, runner.dtype)
    cu, cc = case.cu_seqlens, cmp_cu_seqlens(case.cu_seqlens, config)
    for i in range(len(case.segments)):
        rows, toks = slice(cu[i], cu[i + 1]), slice(cc[i], cc[i + 1])
        alone_inputs = inputs.replace(cu_seqlens=None, **{
            name: x[:, toks] if name in ("k_cmp", "v_cmp") else x[:, rows]
            for name, x in inputs.arrays().items()
        })
        alone, alone_seen, _ = runner.forward(alone_inputs, config)
        assert_forward(runner, alone_seen, config, alone)
        differ = np.any(alone.indices != packed.indices[:, rows], axis=-1) & sure[:, rows]
        assert not differ.any(), f"segment {i}: packed and separate selections differ where decisive"


def test_varlen_poison_does_not_leak(runner) -> None:
    """NaN in some packed sequences leaves every other sequence's output finite and correct."""
    case: Case = VARLEN[0]
    runner.require("forward", case)
    inputs, config = case.inputs(), case.config
    cu, cc = case.cu_seqlens, cmp_cu_seqlens(case.cu_seqlens, config)
    poisoned_segments = (1, 2)
    poisoned = {name: np.array(x) for name, x in inputs.arrays().items()}
    for i in poisoned_segments:
        for name, x in poisoned.items():
            x[:, slice(cc[i], cc[i + 1]) if name in ("k_cmp", "v_cmp") else slice(cu[i], cu[i + 1])] = np.nan
    out, _, _ = runner.forward(inputs.replace(**poisoned), config)
    _, seen = runner.put_inputs(inputs)
    clean_rows = np.concatenate([np.arange(cu[i], cu[i + 1]) for i in range(len(case.segments))
                                 if i not in poisoned_segments])
    oracle = nsa_attention(seen, config, out.indices)
    naive = lowprec.naive_forward(seen, config, out.indices, runner.dtype)
    for name, got, ref, nv in (("o", out.o, oracle.o, naive.o), ("lse", out.lse, oracle.lse, naive.lse)):
        assert_close(f"{name} of unpoisoned sequences", got[:, clean_rows], ref[:, clean_rows],
                     nv[:, clean_rows], runner.dtype, tolerances.K_FORWARD)


def _same(what: str, a, b) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and np.array_equal(a, b, equal_nan=True), f"{what}: two identical calls differ"


@pytest.mark.quick
def test_deterministic(runner) -> None:
    """Where the backend declares `deterministic`: identical calls give bitwise identical results."""
    if not runner.backend.capabilities.deterministic:
        pytest.skip(f"{runner.backend.name} does not declare deterministic")
    case = FORWARD[0]
    runner.require("forward", case)
    theirs, _ = runner.put_inputs(case.inputs())
    first, second = (runner.backend.forward(theirs, case.config) for _ in range(2))
    for field in ("o", "lse", "indices"):
        _same(f"forward {field}", runner.backend.to_numpy(getattr(first, field)),
              runner.backend.to_numpy(getattr(second, field)))
    if not runner.backend.not_supported_reasons(runner.problem("backward", case)):
        grad_o = runner.put(case.rng("grad_o").standard_normal(np.shape(runner.get(first.o))))
        g1, g2 = (runner.backend.backward(theirs, case.config, first, grad_o) for _ in range(2))
        for name in ARRAYS:
            _same(f"backward d{name}", runner.backend.to_numpy(getattr(g1, name)),
                  runner.backend.to_numpy(getattr(g2, name)))
