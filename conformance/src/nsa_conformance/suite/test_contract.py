"""Capability honesty (claims hold, refusals name their reason) and the invalid-input catalogue."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from nsa_spec.backends import OPS, select_backend
from nsa_spec.errors import InvalidInputError, UnsupportedError

from nsa_conformance.cases import FORWARD, VARLEN, Case
from nsa_conformance.harness import compute_capability
from nsa_conformance.lowprec import DTYPES

BASE = FORWARD[0]


@pytest.mark.quick
def test_claimed_configuration_dispatches(runner) -> None:
    """What the backend claims, dispatch by name hands to it without a refusal."""
    for op in sorted(runner.backend.capabilities.ops):
        problem = runner.problem(op, BASE)
        reasons = runner.backend.not_supported_reasons(problem)
        if reasons:
            continue
        assert select_backend(problem, runner.backend.name) is runner.backend


def _unclaimed(backend, device: str) -> list[tuple[str, object]]:
    """A sample of problems outside the backend's capabilities, each with what makes it so."""
    caps = backend.capabilities
    dtype = sorted(caps.dtypes)[0]
    base = BASE.problem("forward", caps.array_api, device, dtype, compute_capability(device))
    out = [("array_api", dataclasses.replace(base, array_api="not-an-array-library"))]
    out += [(f"op={op}", dataclasses.replace(base, op=op)) for op in OPS if op not in caps.ops]
    out += [(f"device={d}", dataclasses.replace(base, device=d))
            for d in ("cpu", "cuda") if d not in caps.devices]
    out += [(f"dtype={d}", dataclasses.replace(base, dtype=d)) for d in DTYPES if d not in caps.dtypes]
    if caps.group_sizes is not None:
        out += [(f"G={g}", dataclasses.replace(base, heads_q=g * base.heads_kv))
                for g in (1, 2, 3, 4, 8, 16, 32) if g not in caps.group_sizes]
    if caps.head_dims is not None:
        out += [(f"dk=dv={d}", dataclasses.replace(base, dk=d, dv=d))
                for d in (8, 24, 64, 96, 128, 192, 256) if d not in caps.head_dims]
    if caps.block_sizes is not None:
        out += [(f"blocks={c.cmp_len, c.cmp_stride, c.slc_len}", dataclasses.replace(base, config=c))
                for c in (FORWARD[3].config, FORWARD[4].config, FORWARD[6].config)
                if (c.cmp_len, c.cmp_stride, c.slc_len) not in caps.block_sizes]
    if not caps.varlen:
        out.append(("varlen", dataclasses.replace(base, varlen=True)))
    return out


@pytest.mark.quick
def test_unclaimed_configurations_are_refused(nsa_backend, nsa_device: str) -> None:
    """Every unclaimed problem gets reasons, and dispatch by name raises naming one of them."""
    cases = _unclaimed(nsa_backend, nsa_device)
    assert cases, "the sample always holds at least the foreign array library"
    for what, problem in cases:
        reasons = nsa_backend.not_supported_reasons(problem)
        assert reasons, f"{what}: outside the declared capabilities, yet not_supported_reasons is empty"
        with pytest.raises(UnsupportedError) as err:
            select_backend(problem, nsa_backend.name)
        assert any(r in str(err.value) for r in reasons), (
            f"{what}: the UnsupportedError does not name the reason: {err.value}"
        )


def _drop_token(x):
    return x[:, :-1]


def _widen(x):
    return np.concatenate([x, x[..., :1]], axis=-1)


# (id, arrays to change -> how, words one of which the message must contain)
CATALOGUE = [
    ("q-3d", {"q": lambda x: x[0]}, ("q",)),
    ("k_slc-short", {"k_slc": _drop_token}, ("k_slc",)),
    ("v_win-short", {"v_win": _drop_token}, ("v_win",)),
    ("k_win-dk", {"k_win": _widen}, ("k_win",)),
    ("v_slc-dv", {"v_slc": _widen, "v_cmp": _widen}, ("v_win", "v_slc", "dv")),
    ("gates-2", {"gates": lambda x: x[..., :2]}, ("gates",)),
    ("k_cmp-count", {"k_cmp": _drop_token}, ("k_cmp",)),
    ("v_cmp-count", {"v_cmp": lambda x: np.concatenate([x, x[:, :1]], axis=1)}, ("v_cmp",)),
    ("heads-not-dividing", {n: (lambda x: np.concatenate([x, x[:, :, :1]], axis=2))
                            for n in ("k_cmp", "v_cmp", "k_slc", "v_slc", "k_win", "v_win")}, ("H", "HQ")),
]
VARLEN_CATALOGUE = [
    ("cu-not-from-0", lambda cu, T: np.concatenate([[1], cu[1:]])),
    ("cu-not-to-T", lambda cu, T: np.concatenate([cu[:-1], [T - 1]])),
    ("cu-decreasing", lambda cu, T: np.array([0, cu[2], cu[1], *cu[3:]])),
    ("cu-2d", lambda cu, T: cu[None]),
]


@pytest.mark.quick
@pytest.mark.parametrize(("bad", "change", "words"), CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_invalid_input_raises(runner, bad: str, change, words) -> None:
    """Shapes that break the contract raise InvalidInputError naming the argument."""
    runner.require("forward", BASE)
    inputs = BASE.inputs()
    arrays = {name: runner.put(fn(np.asarray(getattr(inputs, name)))) for name, fn in change.items()}
    theirs, _ = runner.put_inputs(inputs)
    with pytest.raises(InvalidInputError) as err:
        runner.backend.forward(theirs.replace(**arrays), BASE.config)
    assert any(w in str(err.value) for w in words), f"{bad}: message names none of {words}: {err.value}"


@pytest.mark.parametrize(("bad", "change"), VARLEN_CATALOGUE, ids=[c[0] for c in VARLEN_CATALOGUE])
def test_invalid_cu_seqlens_raises(runner, bad: str, change) -> None:
    """Packed offsets that do not start at 0, end at T and strictly increase raise InvalidInputError."""
    case: Case = VARLEN[0]
    runner.require("forward", case)
    theirs, _ = runner.put_inputs(case.inputs())
    cu = runner.put(change(case.cu_seqlens, case.T), "int64")
    with pytest.raises(InvalidInputError) as err:
        runner.backend.forward(theirs.replace(cu_seqlens=cu), case.config)
    assert "cu_seqlens" in str(err.value), f"{bad}: message does not name cu_seqlens: {err.value}"


def test_cu_seqlens_needs_batch_1(runner) -> None:
    """Packed sequences with B > 1 raise InvalidInputError."""
    case: Case = VARLEN[0]
    runner.require("forward", case)
    inputs = case.inputs()
    doubled = {name: np.concatenate([x, x]) for name, x in inputs.arrays().items()}
    theirs, _ = runner.put_inputs(inputs.replace(**doubled))
    with pytest.raises(InvalidInputError):
        runner.backend.forward(theirs, case.config)
