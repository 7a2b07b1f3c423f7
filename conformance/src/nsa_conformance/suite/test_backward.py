"""Every gradient vs the JAX float64 oracle, with the backend's own selection held fixed."""

from __future__ import annotations

import pytest
from nsa_spec.contract import ARRAYS
from nsa_spec.grad import nsa_attention_grads

from nsa_conformance import lowprec, tolerances
from nsa_conformance.cases import BACKWARD, Case
from nsa_conformance.harness import assert_close

CASES = [pytest.param(c, id=str(c), marks=[pytest.mark.quick] if i == 0 else [])
         for i, c in enumerate(BACKWARD)]


@pytest.mark.parametrize("case", CASES)
def test_backward(runner, case: Case) -> None:
    """Gradients of sum(o * grad_o) for q, every branch's k/v and the gates."""
    runner.require("backward", case)
    out, seen, (theirs, raw) = runner.forward(case.inputs(), case.config)
    grad_o = runner.put(case.rng("grad_o").standard_normal(out.o.shape))
    grad_o_seen = runner.get(grad_o)
    grads = runner.backend.backward(theirs, case.config, raw, grad_o)
    oracle = nsa_attention_grads(seen, case.config, grad_o_seen, out.indices)
    if runner.dtype == "float64":
        naive = {name: getattr(oracle, name) for name in ARRAYS}
    else:
        naive = lowprec.naive_grads(seen, case.config, grad_o_seen, out.indices, runner.dtype)
    for name in ARRAYS:
        assert_close(f"d{name}", runner.get(getattr(grads, name)), getattr(oracle, name), naive[name],
                     runner.dtype, tolerances.K_BACKWARD)
