"""Per-op dispatch: ranks from preferences, user overrides (argument and environment), the
explanation of a choice, and which forward's saved outputs a backward accepts."""

from __future__ import annotations

import dataclasses

import pytest
from nsa_spec import NSAConfig, UnsupportedError
from nsa_spec.backends import (
    Capabilities,
    Preference,
    Problem,
    explain,
    register,
    requested,
    select_backend,
    unregister,
)

CFG = NSAConfig(cmp_len=4, cmp_stride=2, slc_len=4, top_n=4, window=5)


def problem(op: str = "forward", **changes) -> Problem:
    p = Problem(op, "numpy", "cpu", "float64", 4, 2, 3, 2, CFG, tokens=1000)
    return dataclasses.replace(p, **changes)


class Fake:
    """A backend that declares capabilities and runs nothing."""

    def __init__(self, name: str, priority: int, **caps):
        self.name, self.priority = name, priority
        self.capabilities = Capabilities(
            **{"array_api": "numpy", "devices": frozenset({"cpu", "cuda"}), "dtypes": frozenset({"float64"}),
               **caps}
        )

    def unavailable_reason(self):
        return None

    def not_supported_reasons(self, problem):
        return self.capabilities.reasons(problem)


@pytest.fixture
def fakes(monkeypatch):
    """'slow' (priority 10, every op) and 'fast' (priority 5, preferred on cuda for long inputs;
    its backward needs the forward's branch outputs, which only it saves)."""
    for var in ("NSA_BACKEND", "NSA_BACKEND_FORWARD", "NSA_BACKEND_BACKWARD", "NSA_BACKEND_DECODE"):
        monkeypatch.delenv(var, raising=False)
    fast = Fake("fast", 5, ops=frozenset({"forward", "backward"}),
                preferences=(Preference(20, devices=frozenset({"cuda"}), min_tokens=512, reason="measured"),),
                saves=frozenset({"lse", "indices", "branch_o"}),
                backward_needs=frozenset({"lse", "indices", "branch_o"}))
    slow = Fake("slow", 10)
    register(fast)
    register(slow)
    yield
    unregister("fast")
    unregister("slow")


def test_preference_wins_where_it_matches(fakes):
    assert select_backend(problem(device="cuda")).name == "fast"
    assert select_backend(problem(device="cpu")).name == "slow"
    assert select_backend(problem(device="cuda", tokens=100)).name == "slow"  # below min_tokens: yields
    assert select_backend(problem("decode", device="cuda")).name == "slow"  # fast claims no decode


def test_ops_are_chosen_separately_and_saved_outputs_gate_the_backward(fakes):
    fast_saves = frozenset({"lse", "indices", "branch_o"})
    assert select_backend(problem("backward", device="cuda"), saved=fast_saves).name == "fast"
    slow_saves = frozenset({"lse", "indices"})
    assert select_backend(problem("backward", device="cuda"), saved=slow_saves).name == "slow"
    with pytest.raises(UnsupportedError, match=r"backend 'fast' cannot run this backward of .*"
                       r"needs the forward's \['branch_o'\].*saves \['indices', 'lse'\]"):
        select_backend(problem("backward", device="cuda"), "fast", saved=slow_saves)


def test_environment_forces_a_backend_per_op(fakes, monkeypatch):
    monkeypatch.setenv("NSA_BACKEND", "slow")
    assert select_backend(problem(device="cuda")).name == "slow"
    monkeypatch.setenv("NSA_BACKEND_FORWARD", "fast")
    assert requested("forward") == "fast" and requested("decode") == "slow"
    assert select_backend(problem(device="cpu")).name == "fast"
    assert select_backend(problem(device="cpu"), "slow").name == "slow"  # the argument beats the environment


def test_explain_ranks_every_backend_and_marks_the_choice(fakes):
    ranked = explain(problem(device="cuda", dtype="bfloat16"))
    assert [c.name for c in ranked if c.reasons] == [c.name for c in ranked]  # nobody takes bfloat16
    assert not any(c.chosen for c in ranked)
    ranked = {c.name: c for c in explain(problem(device="cuda"))}
    assert ranked["fast"].chosen and ranked["fast"].rank == 20
    assert not ranked["slow"].chosen and ranked["slow"].rank == 10 and not ranked["slow"].reasons
    assert ranked["fast"].describe() == "fast: CHOSEN (rank 20)"
    forced = {c.name: c for c in explain(problem(device="cuda"), "slow")}
    assert forced["slow"].chosen and forced["fast"].reasons == ("not requested (backend 'slow' was)",)


def test_refusal_names_the_problem(fakes):
    with pytest.raises(UnsupportedError) as err:
        select_backend(problem(dtype="float16", device="cuda"))
    first = str(err.value).splitlines()[0]
    assert first == ("no backend supports this forward of B=1, T=1000, HQ=4, H=2 (G=2), dk=3, dv=2, "
                     "float16 numpy on cuda, (l, d, l', n, w)=(4, 2, 4, 4, 5):")
    assert "  fast: dtype='float16' is not supported (supported: ['float64'])" in str(err.value)


def test_preference_describes_itself():
    rule = Preference(20, ops=frozenset({"forward"}), devices=frozenset({"cuda"}), min_tokens=8192,
                      reason="H200, 2026-12")
    assert rule.describe() == "priority 20 for op=forward, device=cuda, tokens>=8192 (H200, 2026-12)"


def test_capabilities_refuse_unknown_saved_outputs():
    with pytest.raises(ValueError, match=r"saves names \['branch_out'\], not outputs a forward saves"):
        Capabilities(array_api="numpy", devices=frozenset({"cpu"}), dtypes=frozenset({"float64"}),
                     saves=frozenset({"lse", "branch_out"}))
