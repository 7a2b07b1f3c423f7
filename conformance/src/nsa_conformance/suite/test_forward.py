"""Each stage and the full forward vs the float64 oracle; selection, the tie rule, random shapes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nsa_spec.reference.nsa import nsa_attention

from nsa_conformance import lowprec, tolerances
from nsa_conformance.cases import FORWARD, QUICK_FORWARD, Case
from nsa_conformance.harness import BRANCHES, assert_close, assert_forward
from nsa_conformance.plugin import hypothesis_settings

CASES = [pytest.param(c, id=str(c), marks=[pytest.mark.quick] if c in QUICK_FORWARD else []) for c in FORWARD]


@pytest.mark.parametrize("case", CASES)
def test_forward(runner, case: Case) -> None:
    """Selected blocks (near-tie policy), the gated output and each branch's lse."""
    runner.require("forward", case)
    out, seen, _ = runner.forward(case.inputs(), case.config)
    assert_forward(runner, seen, case.config, out)


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("case", CASES)
def test_branch(runner, case: Case, branch: str) -> None:
    """One stage at a time: a one-hot gate makes o equal that branch's output."""
    runner.require("forward", case)
    inputs = case.inputs()
    gates = np.zeros_like(inputs.gates)
    gates[..., BRANCHES.index(branch)] = 1.0
    out, seen, _ = runner.forward(inputs.replace(gates=gates), case.config)
    oracle = nsa_attention(seen, case.config, out.indices)
    naive = lowprec.naive_forward(seen, case.config, out.indices, runner.dtype)
    assert_close(f"o[{branch}]", out.o, oracle.o, naive.o, runner.dtype, tolerances.K_FORWARD)


TIE_CASES = [Case(2, 101, 4, 2, 16, 8, l=8, d=4, ls=16, n=4, w=20),
             Case(1, 299, 2, 1, 32, 16, l=32, d=16, ls=64, n=4, w=64)]


@pytest.mark.quick
@pytest.mark.parametrize("case", TIE_CASES, ids=str)
def test_tie_rule(runner, case: Case) -> None:
    """q = 0 makes every fully visible block score exactly equal: the lower index must win."""
    runner.require("forward", case)
    inputs = case.inputs()
    out, seen, _ = runner.forward(inputs.replace(q=np.zeros_like(inputs.q)), case.config)
    oracle = nsa_attention(seen, case.config).indices
    wrong = np.any(out.indices != oracle, axis=-1)
    if wrong.any():
        b, t, h = (int(i) for i in np.argwhere(wrong)[0])
        raise AssertionError(
            f"{int(wrong.sum())} (b, t, h) break exact ties the wrong way, first b={b} t={t} h={h}: "
            f"got {out.indices[b, t, h].tolist()}, lower index wins gives {oracle[b, t, h].tolist()}"
        )


BLOCKS = [(8, 4, 16), (16, 8, 32), (4, 4, 8), (8, 8, 8), (4, 2, 12), (32, 16, 64)]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    l, d, ls = draw(st.sampled_from(BLOCKS))
    g = draw(st.sampled_from([1, 2, 4, 8, 16]))
    h = draw(st.integers(1, 2))
    return Case(
        B=draw(st.integers(1, 2)), T=draw(st.integers(1, 140)), HQ=g * h, H=h,
        dk=draw(st.sampled_from([4, 8, 16])), dv=draw(st.sampled_from([4, 8, 12])),
        l=l, d=d, ls=ls, n=draw(st.integers(3, 6)), w=draw(st.integers(1, 70)),
    )


@hypothesis_settings()
@given(case=cases())
def test_forward_random_shapes(runner, case: Case) -> None:
    """The full forward over the shape space (profile from HYPOTHESIS_PROFILE: ci or thorough)."""
    if runner.backend.not_supported_reasons(runner.problem("forward", case)):
        return
    out, seen, _ = runner.forward(case.inputs(), case.config)
    assert_forward(runner, seen, case.config, out)
