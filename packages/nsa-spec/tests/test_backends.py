"""The backend contract: dispatch to the numpy backend, refusals with reasons, registry failures,
and packed variable-length batches."""

from __future__ import annotations

import dataclasses
import itertools
import logging

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nsa_spec import UnsupportedError
from nsa_spec.backends import (
    Backend,
    Capabilities,
    Problem,
    backends,
    load_failures,
    register,
    registry,
    report,
    select_backend,
    unregister,
)
from nsa_spec.backends.numpy_backend import NumpyBackend
from nsa_spec.grad import nsa_attention_grads
from nsa_spec.info import render
from nsa_spec.reference import compress_inputs, decode_attention, nsa_attention, nsa_forward, prefill
from spec_cases import GRAD_CASES, STREAMS, Case, configs

CASE = dataclasses.replace(GRAD_CASES[0], seed=11)  # shapes the gradient oracle has compiled for
CFG = CASE.config


def problem(op: str = "forward", **changes) -> Problem:
    p = Problem(op, "numpy", "cpu", "float64", CASE.HQ, CASE.H, CASE.dk, CASE.dv, CFG)
    return dataclasses.replace(p, **changes)


class FakeBackend:
    """A backend that declares capabilities and runs nothing."""

    def __init__(self, name: str, priority: int, why_unavailable: str | None = None, **caps):
        self.name, self.priority, self._why = name, priority, why_unavailable
        self.capabilities = Capabilities(
            **{"array_api": "numpy", "devices": frozenset({"cpu"}), "dtypes": frozenset({"float64"}), **caps}
        )

    def unavailable_reason(self):
        return self._why

    def not_supported_reasons(self, problem):
        return self.capabilities.reasons(problem)


@pytest.fixture
def fresh_registry():
    """Discovery runs again in the test and again afterwards, so fakes never leak."""
    registry._discover.cache_clear()
    yield
    registry._discover.cache_clear()


def test_numpy_backend_implements_the_protocol():
    assert isinstance(backends()["numpy"], Backend)
    assert isinstance(NumpyBackend(), Backend)


def test_dispatch_runs_the_numpy_backend_forward_backward_decode():
    x = CASE.inputs()
    inputs = compress_inputs(*(x[n] for n in STREAMS), CFG)
    backend = select_backend(problem("forward"))
    assert backend.name == "numpy"
    out = backend.forward(inputs, CFG)
    want = nsa_attention(inputs, CFG)
    np.testing.assert_array_equal(out.o, want.o)
    np.testing.assert_array_equal(out.lse, want.lse)
    np.testing.assert_array_equal(out.indices, want.indices)

    grad_o = np.random.default_rng(0).standard_normal(out.o.shape)
    grads = select_backend(problem("backward"), name="numpy").backward(inputs, CFG, out, grad_o)
    want_grads = nsa_attention_grads(inputs, CFG, grad_o, out.indices)
    for name in inputs.arrays():
        np.testing.assert_array_equal(getattr(grads, name), getattr(want_grads, name))

    _, cache = prefill(*(x[n] for n in STREAMS), CFG)
    q, gates = x["q"][:, -1:], x["gates"][:, -1:]
    result = select_backend(problem("decode")).decode(cache, q, gates, CFG)
    want_step = decode_attention(cache, q, gates, CFG)
    np.testing.assert_array_equal(result.out.o, want_step.out.o)
    np.testing.assert_array_equal(result.reads, want_step.reads)
    np.testing.assert_allclose(result.out.o[:, 0], out.o[:, -1], rtol=1e-12, atol=1e-13)


def test_numpy_backend_moves_arrays():
    b = backends()["numpy"]
    x = b.asarray(np.arange(3), "float64", "cpu")
    assert x.dtype == np.float64
    np.testing.assert_array_equal(b.to_numpy(x), [0.0, 1.0, 2.0])


def test_unsupported_problem_lists_reasons_per_backend():
    with pytest.raises(UnsupportedError) as err:
        select_backend(problem(dtype="bfloat16"))
    message = str(err.value)
    assert message.startswith(
        "no backend supports this forward of B=1, T=1, HQ=4, H=2 (G=2), dk=3, dv=2, bfloat16 numpy on cpu"
    )
    assert "  numpy: dtype='bfloat16' is not supported (supported: ['float64'])" in message.splitlines()
    for name in [*backends(), *load_failures()]:
        assert f"  {name}: " in message


def test_named_backend_refusal_says_why():
    refusal = r"backend 'numpy' cannot run this forward of .* on cuda, .*: device='cuda'"
    with pytest.raises(UnsupportedError, match=refusal):
        select_backend(problem(device="cuda"), name="numpy")
    with pytest.raises(UnsupportedError, match=r"backend='nope' is not available \(known: \[.*'numpy'"):
        select_backend(problem(), name="nope")


def test_capability_reasons_name_value_and_support():
    caps = Capabilities(
        array_api="numpy",
        devices=frozenset({"cuda"}),
        dtypes=frozenset({"bfloat16"}),
        ops=frozenset({"forward"}),
        head_dims=frozenset({64, 128}),
        group_sizes=frozenset({16}),
        block_sizes=frozenset({(32, 16, 64)}),
        varlen=False,
        min_compute_capability=(9, 0),
    )
    p = dataclasses.replace(problem("decode"), device="cuda", varlen=True, compute_capability=(8, 0))
    assert caps.reasons(p) == [
        "op='decode' is not supported (supported: ['forward'])",
        "dtype='float64' is not supported (supported: ['bfloat16'])",
        "dk=3 is not supported (supported: 64, 128)",
        "dv=2 is not supported (supported: 64, 128)",
        "group size G=HQ/H=2 is not supported (supported: 16)",
        "(l, d, l')=(4, 2, 4) is not supported (supported: [(32, 16, 64)])",
        "varlen (cu_seqlens) is not supported",
        "compute capability (8, 0) is below the minimum (9, 0)",
    ]
    assert caps.reasons(dataclasses.replace(p, array_api="torch"))[1] == (
        "arrays are 'torch', this backend takes 'numpy'"
    )
    wide = dataclasses.replace(caps, head_dims=frozenset(range(1, 257)))
    assert "dk=300 is not supported (supported: 1..256)" in wide.reasons(dataclasses.replace(p, dk=300))


class FakeEntryPoint:
    def __init__(self, name, factory):
        self.name, self._factory = name, factory

    def load(self):
        return self._factory


def broken_factory():
    raise ImportError("libfake.so: cannot open shared object file")


def test_registry_turns_a_failing_plugin_into_a_warning(monkeypatch, fresh_registry, caplog):
    eps = [
        FakeEntryPoint("numpy", NumpyBackend),
        FakeEntryPoint("fast", lambda: FakeBackend("fast", priority=5, ops=frozenset({"forward"}))),
        FakeEntryPoint("broken", broken_factory),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps if group == registry.GROUP else [])
    with pytest.warns(UserWarning, match="nsa backend 'broken' failed to load: ImportError: libfake.so"):
        found = backends()
    assert list(found) == ["fast", "numpy"]  # highest priority first
    assert load_failures() == {"broken": "ImportError: libfake.so: cannot open shared object file"}
    assert report(problem())["broken"] == [
        "failed to load: ImportError: libfake.so: cannot open shared object file"
    ]
    assert "broken: failed to load: ImportError" in render()
    with pytest.raises(UnsupportedError, match="it failed to load: ImportError"):
        select_backend(problem(), name="broken")
    with caplog.at_level(logging.DEBUG, logger="nsa.dispatch"):
        assert select_backend(problem("forward")).name == "fast"
        assert select_backend(problem("decode")).name == "numpy"  # fast declares forward only
    assert "using backend 'fast'" in caplog.text and "using backend 'numpy'" in caplog.text


def test_unavailable_backend_is_reported_not_chosen(fresh_registry):
    register(FakeBackend("gpu-only", priority=50, why_unavailable="no CUDA device"))
    try:
        assert report(problem())["gpu-only"] == ["unavailable: no CUDA device"]
        assert select_backend(problem()).name == "numpy"
        assert "gpu-only (priority 50): unavailable: no CUDA device" in render()
    finally:
        unregister("gpu-only")
    assert "gpu-only" not in backends()


@st.composite
def packed(draw: st.DrawFn):
    """1 to 3 sequences of 1 to 40 tokens, packed along T with B = 1."""
    cfg = draw(configs())
    lengths = draw(st.lists(st.integers(1, 40), min_size=1, max_size=3))
    H = draw(st.integers(1, 2))
    case = Case(
        cfg,
        B=1,
        T=sum(lengths),
        HQ=H * draw(st.sampled_from([1, 2, 4])),
        H=H,
        dk=draw(st.integers(1, 4)),
        dv=draw(st.integers(1, 4)),
        phi=draw(st.sampled_from(["mean", "mlp"])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    return case, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


@given(packed())
def test_varlen_equals_each_sequence_alone(case_cu):
    case, cu = case_cu
    x = case.inputs()
    params = case.phi_params()
    inputs = compress_inputs(*(x[n] for n in STREAMS), case.config, case.phi, params, cu_seqlens=cu)
    out = select_backend(dataclasses.replace(problem(), varlen=True)).forward(inputs, case.config)
    for lo, hi in itertools.pairwise(cu):
        alone = nsa_forward(*(x[n][:, lo:hi] for n in STREAMS), case.config, case.phi, params)
        np.testing.assert_array_equal(out.indices[:, lo:hi], alone.indices)
        np.testing.assert_allclose(out.o[:, lo:hi], alone.o, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(out.lse[:, lo:hi], alone.lse, rtol=1e-12, atol=1e-13)
