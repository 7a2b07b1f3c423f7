"""The gradient oracle (`nsa_spec.grad`) against central finite differences in float64.

Selection is held fixed by passing the forward's indices to the finite differences too. Each
array (and each phi 'mlp' parameter) is checked along random directions u:
(L(x + h u) - L(x - h u)) / 2h against <dL/dx, u>, with L = sum(o * grad_o).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from nsa_spec.grad import nsa_attention_grads, nsa_forward_grads
from nsa_spec.reference import compress_inputs, nsa_attention, nsa_forward
from spec_cases import GRAD_CASES, STREAMS, Case, heavy

H_STEP = 1e-5
# Central differences err by ~h^2 |L'''| ~ 1e-10 and rounding by ~eps |L| / h ~ 1e-9 here;
# a wrong or missing gradient term is O(1).
TOL = 1e-6


@st.composite
def tiny_cases(draw: st.DrawFn) -> Case:
    case = draw(st.sampled_from(GRAD_CASES))
    return dataclasses.replace(
        case, phi=draw(st.sampled_from(["mean", "mlp"])), seed=draw(st.integers(0, 2**32 - 1))
    )


def check_directions(loss, x: np.ndarray, grad: np.ndarray, rng: np.random.Generator, name: str) -> None:
    """Directional finite differences of `loss` at `x` against `grad`, for 3 random directions."""
    assert grad.shape == x.shape and np.all(np.isfinite(grad)), name
    for _ in range(3):
        u = rng.standard_normal(x.shape)
        fd = (loss(x + H_STEP * u) - loss(x - H_STEP * u)) / (2 * H_STEP)
        exact = float(np.sum(grad * u))
        assert abs(fd - exact) <= TOL * (1 + abs(exact)), f"{name}: fd={fd!r} grad.u={exact!r}"


@heavy
@given(case=tiny_cases())
def test_forward_grads_match_finite_differences(case):
    """q, raw cmp k/v, slc k/v, win k/v, gates and phi 'mlp' parameters (phi applied inside)."""
    x = case.inputs()
    params = case.phi_params()
    rng = np.random.default_rng(case.seed + 3)
    grad_o = rng.standard_normal((case.B, case.T, case.HQ, case.dv))
    indices = nsa_forward(*(x[n] for n in STREAMS), case.config, case.phi, params).indices
    grads, g_params = nsa_forward_grads(
        *(x[n] for n in STREAMS), case.config, grad_o, case.phi, params
    )

    def loss(arrays, prm):
        o = nsa_forward(*(arrays[n] for n in STREAMS), case.config, case.phi, prm, indices=indices).o
        return float(np.sum(o * grad_o))

    for name in STREAMS:
        check_directions(lambda v, name=name: loss({**x, name: v}, params), x[name], grads[name], rng, name)
    if params is None:
        assert g_params is None
        return
    for kv in ("k", "v"):
        for key, value in params[kv].items():

            def loss_param(v, kv=kv, key=key):
                return loss(x, {**params, kv: {**params[kv], key: v}})

            check_directions(loss_param, value, g_params[kv][key], rng, f"phi_params[{kv}][{key}]")


@heavy
@given(case=tiny_cases())
def test_attention_grads_match_finite_differences(case):
    """The kernel contract: gradients for q, compressed k~/v~, slc and win k/v and the gates."""
    x = case.inputs()
    inputs = compress_inputs(*(x[n] for n in STREAMS), case.config, case.phi, case.phi_params())
    rng = np.random.default_rng(case.seed + 4)
    grad_o = rng.standard_normal((case.B, case.T, case.HQ, case.dv))
    out = nsa_attention(inputs, case.config)
    grads = nsa_attention_grads(inputs, case.config, grad_o)
    for name, value in inputs.arrays().items():

        def loss(v, name=name):
            o = nsa_attention(inputs.replace(**{name: v}), case.config, out.indices).o
            return float(np.sum(o * grad_o))

        check_directions(loss, np.asarray(value), getattr(grads, name), rng, name)


def test_grads_hold_the_given_selection():
    """Passing other indices changes the gradient: the oracle differentiates the given selection."""
    case = dataclasses.replace(GRAD_CASES[0], seed=5)
    x = case.inputs()
    inputs = compress_inputs(*(x[n] for n in STREAMS), case.config)
    out = nsa_attention(inputs, case.config)
    t = case.T - 1  # block 4: forced 0, 3, 4 and one free slot among 1, 2
    other = out.indices.copy()
    free = 3 - int(other[0, t, 0, 1])  # swap the free block: 1 <-> 2
    other[0, t, 0] = np.sort([0, free, 3, 4])
    assert not np.array_equal(other, out.indices)
    grad_o = np.random.default_rng(6).standard_normal((case.B, case.T, case.HQ, case.dv))
    a = nsa_attention_grads(inputs, case.config, grad_o, out.indices)
    b = nsa_attention_grads(inputs, case.config, grad_o, other)
    assert not np.allclose(a.k_slc, b.k_slc)
    np.testing.assert_array_equal(a.k_win, b.k_win)


def test_varlen_grads_equal_each_sequence_alone():
    """Packed sequences (cu_seqlens) get the gradients each sequence gets on its own."""
    case = dataclasses.replace(GRAD_CASES[1], seed=8)
    x = case.inputs()
    cu = np.array([0, 4, case.T])
    grad_o = np.random.default_rng(9).standard_normal((1, case.T, case.HQ, case.dv))
    packed, _ = nsa_forward_grads(*(x[n] for n in STREAMS), case.config, grad_o, cu_seqlens=cu)
    for lo, hi in itertools.pairwise(cu):
        alone, _ = nsa_forward_grads(*(x[n][:, lo:hi] for n in STREAMS), case.config, grad_o[:, lo:hi])
        for name in STREAMS:
            got = packed[name][:, lo:hi]
            np.testing.assert_allclose(got, alone[name], rtol=1e-12, atol=1e-13, err_msg=name)
