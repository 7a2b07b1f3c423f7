"""Invariants: causality, every allowed key (and no other) gets weight, GQA, full attention."""

from __future__ import annotations

import numpy as np
import pytest
from nsa_spec.blocks import cmp_visible_mask, n_cmp_visible
from nsa_spec.reference.attention import attend
from nsa_spec.reference.select import selected_mask
from nsa_spec.reference.window import window_mask

from nsa_conformance import lowprec, tolerances
from nsa_conformance.cases import FORWARD, FULL, GROUPS, Case
from nsa_conformance.harness import BRANCHES, assert_close, decisive

CAUSAL = [FORWARD[0], FORWARD[3], FORWARD[6]]


def _one_hot(inputs, branch: str):
    gates = np.zeros_like(inputs.gates)
    gates[..., BRANCHES.index(branch)] = 1.0
    return inputs.replace(gates=gates)


@pytest.mark.parametrize("case", CAUSAL, ids=str)
def test_causality(runner, case: Case) -> None:
    """Changing everything a query may not see changes neither its output nor its selection."""
    runner.require("forward", case)
    inputs, config = case.inputs(), case.config
    out, _, _ = runner.forward(inputs, config)
    t0 = case.T // 2 + 1
    rng = case.rng("future")
    future = {}
    for name in ("q", "k_slc", "v_slc", "k_win", "v_win"):
        x = np.array(getattr(inputs, name))
        x[:, t0 + 1 :] += 5.0 * rng.standard_normal(x[:, t0 + 1 :].shape)
        future[name] = x
    future["gates"] = np.array(inputs.gates)
    future["gates"][:, t0 + 1 :] = rng.uniform(0.1, 1.0, future["gates"][:, t0 + 1 :].shape)
    visible = int(n_cmp_visible(t0, config))
    for name in ("k_cmp", "v_cmp"):
        x = np.array(getattr(inputs, name))
        x[:, visible:] += 5.0 * rng.standard_normal(x[:, visible:].shape)
        future[name] = x
    changed, _, _ = runner.forward(inputs.replace(**future), config)
    prefix = slice(0, t0 + 1)
    moved = np.any(changed.indices[:, prefix] != out.indices[:, prefix], axis=-1)
    if moved.any():
        b, t, h = (int(i) for i in np.argwhere(moved)[0])
        raise AssertionError(f"selection of query t={t} (b={b}, h={h}) depends on tokens after t0={t0}: "
                             f"{out.indices[b, t, h].tolist()} -> {changed.indices[b, t, h].tolist()}")
    ref_o, ref_lse = out.o[:, prefix], out.lse[:, prefix]
    assert_close(f"o[t <= {t0}] after changing t > {t0}", changed.o[:, prefix], ref_o, ref_o,
                 runner.dtype, tolerances.K_FORWARD)
    assert_close(f"lse[t <= {t0}] after changing t > {t0}", changed.lse[:, prefix], ref_lse, ref_lse,
                 runner.dtype, tolerances.K_FORWARD)


WEIGHT = [Case(1, 101, 4, 2, 16, 8, l=8, d=4, ls=16, n=4, w=20),
          Case(1, 7, 4, 1, 8, 16, l=8, d=4, ls=16, n=4, w=20),
          Case(1, 77, 8, 1, 16, 16, l=16, d=8, ls=32, n=3, w=7)]


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("case", WEIGHT, ids=str)
def test_every_allowed_key_gets_weight(runner, case: Case, branch: str) -> None:
    """Perturbing one key's value moves exactly the outputs of the queries allowed to see it.

    One batch row per perturbed key; the branch is isolated by a one-hot gate. q is shrunk so
    every allowed key's weight is far above the dtype's resolution.
    """
    runner.require("forward", case)
    config = case.config
    base = _one_hot(case.inputs(), branch)
    base = base.replace(q=0.3 * base.q)
    T, N = case.T, base.k_cmp.shape[1]
    if branch == "cmp":
        keys = sorted({0, N // 2, N - 1}) if N else []
    else:
        keys = sorted({0, T // 3, T // 2, max(0, T - case.w), T - 1})
    if not keys:
        pytest.skip(f"T={T} < l={case.l}: there are no compressed tokens")
    batch = {name: np.repeat(x, len(keys) + 1, axis=0) for name, x in base.arrays().items()}
    for row, key in enumerate(keys, 1):
        batch[f"v_{branch}"][row, key] += 256.0
    out, _, _ = runner.forward(base.replace(**batch), config)
    assert np.all(out.indices == out.indices[:1]), "selection changed when only values changed"
    diff = np.max(np.abs(out.o[1:] - out.o[:1]), axis=-1)  # [keys, T, HQ]
    G = case.HQ // case.H
    if branch == "win":
        allowed = window_mask(T, T, config)[:, keys].T[:, :, None]
    elif branch == "cmp":
        allowed = cmp_visible_mask(T, N, config)[:, keys].T[:, :, None]
    else:
        mask = selected_mask(out.indices[0], T, config)[:, :, keys]  # [H, T, keys]
        allowed = np.repeat(np.transpose(mask, (2, 1, 0)), G, axis=2)
    allowed = np.broadcast_to(allowed, diff.shape)
    floor = tolerances.floor(runner.dtype) * max(1.0, float(np.max(np.abs(out.o[0]))))
    leaked = ~allowed & (diff > floor)
    if leaked.any():
        k, t, h = (int(i) for i in np.argwhere(leaked)[0])
        raise AssertionError(f"{branch}: key {keys[k]} moved query t={t} (head {h}), which may not see it "
                             f"(by {diff[k, t, h]:.3e})")
    ignored = allowed & ~(diff > 0)
    if ignored.any():
        k, t, h = (int(i) for i in np.argwhere(ignored)[0])
        raise AssertionError(f"{branch}: query t={t} (head {h}) gave allowed key {keys[k]} no weight; "
                             f"{int(ignored.sum())} (key, query, head) triples ignored")


@pytest.mark.parametrize("case", GROUPS, ids=str)
def test_gqa_consistency(runner, case: Case) -> None:
    """Reordering the query heads inside each group reorders the outputs and keeps the selection."""
    runner.require("forward", case)
    inputs, config, G = case.inputs(), case.config, case.HQ // case.H
    perm = np.array([g * G + (G - 1 - i) for g in range(case.H) for i in range(G)])
    out, seen, _ = runner.forward(inputs, config)
    swapped, _, _ = runner.forward(inputs.replace(q=inputs.q[:, :, perm], gates=inputs.gates[:, :, perm]),
                                   config)
    same = np.all(swapped.indices == out.indices, axis=-1)  # [B, T, H]
    moved = ~same & decisive(seen, config, runner.dtype)
    if moved.any():
        b, t, h = (int(i) for i in np.argwhere(moved)[0])
        raise AssertionError(f"head order inside group {h} changed the selection at b={b} t={t}: "
                             f"{out.indices[b, t, h].tolist()} -> {swapped.indices[b, t, h].tolist()}")
    back = np.empty_like(swapped.o)
    back[:, :, perm] = swapped.o
    rows = np.repeat(same, G, axis=2)[..., None]
    assert_close("o with heads reordered within groups", np.where(rows, back, out.o), out.o, out.o,
                 runner.dtype, tolerances.K_FORWARD)


def _dense(inputs, stream: str, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Full causal attention of q over one stream, per batch element, in `dtype` (naively)."""
    arrays = inputs.arrays()
    q, k, v = (np.asarray(arrays[name]) for name in ("q", f"k_{stream}", f"v_{stream}"))
    T, dk = q.shape[1], q.shape[-1]
    causal = np.tril(np.ones((T, T), dtype=bool))[None]
    outs, lses = [], []
    with np.errstate(all="ignore"):
        for b in range(q.shape[0]):
            cast = (lowprec.as_dtype(x[b], dtype) for x in (q, k, v))
            o, lse = attend(*cast, causal, 1.0 / np.sqrt(dk))
            outs.append(np.asarray(lowprec.plain(o), dtype=np.float64))
            lses.append(np.asarray(lowprec.plain(lse), dtype=np.float64))
    return np.stack(outs), np.stack(lses)


@pytest.mark.parametrize("branch", ["slc", "win"])
@pytest.mark.parametrize("case", FULL, ids=str)
def test_full_attention_equivalence(runner, case: Case, branch: str) -> None:
    """With n*l' >= T and w >= T the selected and sliding branches are full causal attention."""
    runner.require("forward", case)
    config = case.config
    assert case.n * case.ls >= case.T and case.w >= case.T
    out, seen, _ = runner.forward(_one_hot(case.inputs(), branch), config)
    current = np.arange(case.T) // case.ls
    for t in range(case.T):
        want = list(range(current[t] + 1)) + [-1] * (case.n - current[t] - 1)
        got = out.indices[:, t].reshape(-1, case.n)
        assert np.all(got == want), f"t={t}: every block must be selected, got {got.tolist()}"
    oracle_o, oracle_lse = _dense(seen, branch, "float64")
    naive_o, naive_lse = _dense(seen, branch, runner.dtype)
    i = BRANCHES.index(branch)
    assert_close(f"o[{branch}] vs full causal attention", out.o, oracle_o, naive_o, runner.dtype,
                 tolerances.K_FORWARD)
    assert_close(f"lse[{branch}] vs full causal attention", out.lse[..., i], oracle_lse, naive_lse,
                 runner.dtype, tolerances.K_FORWARD)
